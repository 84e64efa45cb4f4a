//! A user-space latency proxy for benchmarks (not part of the product): it listens on
//! 127.0.0.1, forwards each connection to a server on 127.0.0.1, and delays every chunk, in
//! each direction, by a fixed one-way time — so a local Postfix or the fake Microsoft 365
//! server behaves like one `2 × one-way` milliseconds away. Order and bytes are kept; only
//! time is added. It also counts each connection's client flights that the server answered
//! (bytes the client sent after it had received something from the server, followed by an
//! answer; a last TLS close_notify that waits for nothing does not count): with the
//! greeting's half, that is the connection's round trips on the wire.
//!
//! ```text
//! cargo run --release --example latency_proxy -- --to 127.0.0.1:2525 [--listen 127.0.0.1:0]
//!     [--one-way-ms 25]
//! ```
//!
//! It prints `listening on 127.0.0.1:PORT` on stdout, then one line per closed connection on
//! stderr (`connection N: K client flights, B bytes up, B bytes down`). Loopback only: it
//! refuses a target or a listening address that is not 127.0.0.1. `benches/rtt.rs` runs the
//! same code in-process (`serve`). Each direction of each connection has its own reader and
//! writer threads and sleeps with `std::thread::sleep`, so the added time is the one-way time
//! to within a fraction of a millisecond (an async timer would round every hop up to its
//! millisecond tick).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What one proxied connection carried.
#[derive(Debug, Clone, Default)]
pub struct ConnStats {
    /// Client flights the server answered: chunks from the client that follow something
    /// delivered to it, and that something from the server followed.
    pub flights: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub closed: bool,
}

/// Every connection the proxy carried, in order of arrival.
pub type Stats = Arc<Mutex<Vec<ConnStats>>>;

/// (something reached the client since its last chunk, a flight waits for its answer).
type FlightState = Arc<Mutex<(bool, bool)>>;

/// Accept connections on `listener` and proxy each to `target` with `one_way` delay in each
/// direction, on threads of their own. Returns at once; runs for the life of the process.
pub fn serve(listener: TcpListener, target: SocketAddr, one_way: Duration, stats: Stats) {
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let idx = {
                let Ok(mut s) = stats.lock() else { return };
                s.push(ConnStats::default());
                s.len() - 1
            };
            let stats = stats.clone();
            thread::spawn(move || connection(client, target, one_way, idx, stats));
        }
    });
}

fn connection(client: TcpStream, target: SocketAddr, delay: Duration, idx: usize, stats: Stats) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // The client's next chunk after a delivery starts a flight, which counts once the server
    // sends something back. The greeting (or the first byte) starts it all.
    let flight: FlightState = Arc::new(Mutex::new((true, false)));
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = {
        let (stats, flight) = (stats.clone(), flight.clone());
        thread::spawn(move || pipe(client, s2, delay, Dir::Up, idx, stats, flight))
    };
    pipe(server, c2, delay, Dir::Down, idx, stats.clone(), flight);
    let _ = up.join();
    if let Ok(mut s) = stats.lock()
        && let Some(c) = s.get_mut(idx)
    {
        c.closed = true;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// Forward `from` to `to`, each chunk `delay` after it arrived (a writer thread sleeps until
/// each chunk is due).
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    dir: Dir,
    idx: usize,
    stats: Stats,
    flight: FlightState,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    let writer = {
        let flight = flight.clone();
        thread::spawn(move || {
            while let Ok((due, chunk)) = rx.recv() {
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
                let Some(chunk) = chunk else {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                };
                if to.write_all(&chunk).is_err() {
                    return;
                }
                if dir == Dir::Down
                    && let Ok(mut f) = flight.lock()
                {
                    f.0 = true;
                }
            }
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).unwrap_or(0);
        let due = Instant::now() + delay;
        if n == 0 {
            let _ = tx.send((due, None));
            break;
        }
        if let Ok(mut s) = stats.lock()
            && let Some(c) = s.get_mut(idx)
            && let Ok(mut f) = flight.lock()
        {
            match dir {
                Dir::Up => {
                    c.bytes_up += n as u64;
                    if f.0 {
                        *f = (false, true);
                    }
                }
                Dir::Down => {
                    c.bytes_down += n as u64;
                    if f.1 {
                        f.1 = false;
                        c.flights += 1;
                    }
                }
            }
        }
        if tx.send((due, Some(buf[..n].to_vec()))).is_err() {
            break;
        }
    }
    let _ = writer.join();
}

fn loopback(addr: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|e| format!("{addr}: not an address ({e})"))?;
    if !a.ip().is_loopback() {
        return Err(format!("{addr}: only 127.0.0.1 is allowed"));
    }
    Ok(a)
}

fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut target = None;
    let mut one_way_ms = 25u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("latency_proxy: {name} needs a value");
                std::process::exit(64)
            })
        };
        match a.as_str() {
            "--listen" => listen = value("--listen"),
            "--to" => target = Some(value("--to")),
            "--one-way-ms" => {
                one_way_ms = value("--one-way-ms").parse().unwrap_or_else(|_| {
                    eprintln!("latency_proxy: --one-way-ms takes a number");
                    std::process::exit(64)
                })
            }
            other => {
                eprintln!(
                    "latency_proxy: unknown argument {other}\nusage: latency_proxy --to 127.0.0.1:PORT [--listen 127.0.0.1:0] [--one-way-ms 25]"
                );
                std::process::exit(64)
            }
        }
    }
    let parsed = target
        .ok_or_else(|| "--to 127.0.0.1:PORT is required".to_owned())
        .and_then(|t| loopback(&t))
        .and_then(|t| loopback(&listen).map(|l| (l, t)));
    let (listen, target) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("latency_proxy: {e}");
            std::process::exit(64)
        }
    };
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("latency_proxy: cannot listen on {listen}: {e}");
            std::process::exit(71)
        }
    };
    if let Ok(a) = listener.local_addr() {
        println!("listening on {a}");
    }
    let stats: Stats = Arc::default();
    serve(
        listener,
        target,
        Duration::from_millis(one_way_ms),
        stats.clone(),
    );
    let mut reported = 0;
    loop {
        thread::sleep(Duration::from_millis(200));
        let Ok(s) = stats.lock() else { return };
        while reported < s.len() && s[reported].closed {
            let c = &s[reported];
            eprintln!(
                "connection {reported}: {} client flights, {} bytes up, {} bytes down",
                c.flights, c.bytes_up, c.bytes_down
            );
            reported += 1;
        }
    }
}
