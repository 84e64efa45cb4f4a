//! Naming a server that speaks only TLS 1.0 or 1.1. rustls (rightly) cannot speak them, so
//! when our handshake fails for want of a common version, a second connection goes as far as
//! STARTTLS and sends a minimal TLS 1.1 ClientHello by hand; the version in the server's
//! ServerHello says what it offers. Nothing else is sent and the connection is dropped right
//! after the ServerHello: no handshake is completed, no data is exchanged. Must not: send
//! anything after the ClientHello, or be used for anything but naming the version.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::smtp::reply::ReplyParser;

/// "TLS 1.1" or "TLS 1.0" (or "SSL 3.0") when the server at `host:port` chooses that version
/// for a TLS 1.1 ClientHello sent after STARTTLS; None when it refuses it or anything else
/// goes wrong.
pub async fn offered(host: &str, port: u16, helo: &str, wait: Duration) -> Option<&'static str> {
    timeout(wait, probe(host, port, helo)).await.ok().flatten()
}

async fn probe(host: &str, port: u16, helo: &str) -> Option<&'static str> {
    let mut tcp = TcpStream::connect((host, port)).await.ok()?;
    let mut buf = Vec::new();
    reply(&mut tcp, &mut buf).await.filter(|c| *c == 220)?;
    tcp.write_all(format!("EHLO {helo}\r\n").as_bytes())
        .await
        .ok()?;
    reply(&mut tcp, &mut buf).await.filter(|c| *c == 250)?;
    tcp.write_all(b"STARTTLS\r\n").await.ok()?;
    reply(&mut tcp, &mut buf).await.filter(|c| *c == 220)?;
    tcp.write_all(&client_hello(host)).await.ok()?;
    let mut head = [0u8; 11];
    tcp.read_exact(&mut head).await.ok()?;
    // A handshake record holding a ServerHello: record header (5), handshake type and length
    // (4), then the version the server chose.
    if head[0] != 0x16 || head[5] != 0x02 {
        return None;
    }
    match (head[9], head[10]) {
        (3, 2) => Some("TLS 1.1"),
        (3, 1) => Some("TLS 1.0"),
        (3, 0) => Some("SSL 3.0"),
        _ => None,
    }
}

/// Read one SMTP reply; its code.
async fn reply(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    let mut parser = ReplyParser::default();
    loop {
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            if let Ok(Some(r)) = parser.line(text.trim_end_matches(['\r', '\n'])) {
                return Some(r.code);
            }
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A TLS 1.1 ClientHello: the CBC suites TLS 1.0/1.1 servers have, the named groups and
/// point formats ECDHE needs, and the server name when `host` is a name.
fn client_hello(host: &str) -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    let mut random = [0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    body.extend_from_slice(&random);
    body.push(0); // no session id
    let suites: [u16; 8] = [
        0xc009, 0xc00a, 0xc013, 0xc014, // ECDHE-ECDSA/RSA with AES-CBC-SHA
        0x002f, 0x0035, // RSA with AES-CBC-SHA
        0x000a, // RSA with 3DES
        0x00ff, // renegotiation info SCSV
    ];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null only
    let mut ext = Vec::new();
    if host.parse::<std::net::IpAddr>().is_err() && !host.is_empty() && host.len() < 256 {
        let name = host.as_bytes();
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0); // host_name
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        push_ext(&mut ext, 0x0000, &sni);
    }
    // supported_groups: x25519, secp256r1, secp384r1.
    push_ext(
        &mut ext,
        0x000a,
        &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18],
    );
    // ec_point_formats: uncompressed.
    push_ext(&mut ext, 0x000b, &[1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut hs = vec![0x01]; // ClientHello
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

fn push_ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_lengths_add_up() {
        let h = client_hello("smtp.example.org");
        assert_eq!(&h[..3], &[0x16, 0x03, 0x01]);
        let record_len = u16::from_be_bytes([h[3], h[4]]) as usize;
        assert_eq!(record_len, h.len() - 5);
        assert_eq!(h[5], 0x01);
        let hs_len = u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize;
        assert_eq!(hs_len, h.len() - 9);
        assert_eq!(&h[9..11], &[0x03, 0x02]);
        // The server name is in it; an IP address is not sent as one.
        assert!(h.windows(16).any(|w| w == b"smtp.example.org"));
        assert!(
            !client_hello("127.0.0.1")
                .windows(9)
                .any(|w| w == b"127.0.0.1")
        );
    }
}
