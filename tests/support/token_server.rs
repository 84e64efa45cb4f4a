//! A mock Microsoft identity platform for tests: a tiny HTTP/1.1 server on 127.0.0.1 with an
//! ephemeral port, standing in for login.microsoftonline.com (set `auth.authority` to
//! `server.authority()`). It records each request (method, path, headers, decoded form
//! fields), counts them, and answers with whatever the test's handler returns (optionally
//! after a delay). One connection = one request (`Connection: close`).
//!
//! It runs on its own thread and runtime, so tests may call it from any number of threads
//! with their own runtimes. Dropping the server stops it.
//!
//! Requests are read by support/http.rs, which the test file includes beside this one.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    /// The value of a form field (the first, if repeated).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The field names, sorted.
    pub fn field_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.form.iter().map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json; charset=utf-8",
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/html",
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    /// A successful token answer.
    pub fn token(access_token: &str, expires_in: i64, refresh_token: Option<&str>) -> Reply {
        let mut v = serde_json::json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": access_token,
        });
        if let Some(r) = refresh_token {
            v["refresh_token"] = serde_json::Value::String(r.to_string());
        }
        Reply::json(200, v)
    }
    /// An identity-platform error answer, as Microsoft formats it.
    pub fn error(status: u16, error: &str, aadsts: Option<u64>, description: &str) -> Reply {
        let desc = match aadsts {
            Some(c) => format!(
                "AADSTS{c}: {description}\r\nTrace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333\r\n\
                 Correlation ID: 1111bbbb-22cc-dddd-ee33-ffffff444444\r\nTimestamp: 2026-01-01 00:00:00Z"
            ),
            None => description.to_string(),
        };
        Reply::json(
            status,
            serde_json::json!({
                "error": error,
                "error_description": desc,
                "error_codes": aadsts.map(|c| vec![c]).unwrap_or_default(),
                "timestamp": "2026-01-01 00:00:00Z",
                "trace_id": "0000aaaa-11bb-cccc-dd22-eeeeee333333",
            }),
        )
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&Request, usize) -> Reply + Send + Sync;

pub struct TokenServer {
    pub port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Start a server whose answers come from `handler(request, index)`, index counting all
    /// requests from 0.
    pub fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let recs = requests.clone();
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            continue;
                        };
                        let recs = recs.clone();
                        let handler = handler.clone();
                        tokio::spawn(async move {
                            let _ = serve(sock, recs, handler).await;
                        });
                    }
                };
                tokio::select! {
                    _ = stop_rx => {}
                    _ = accept => {}
                }
            });
        });
        TokenServer {
            port,
            requests,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Answers given in order; the last one repeats.
    pub fn scripted(replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty());
        Self::start(move |_, i| replies[i.min(replies.len() - 1)].clone())
    }

    /// The authority URL to put in `auth.authority`.
    pub fn authority(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    mut sock: TcpStream,
    recs: Arc<Mutex<Vec<Request>>>,
    handler: Arc<Handler>,
) -> std::io::Result<()> {
    let Some(crate::http::Head {
        method,
        path,
        headers,
        body,
    }) = crate::http::read_request(&mut sock, &mut Vec::new()).await?
    else {
        return Ok(());
    };
    let body = String::from_utf8_lossy(&body).to_string();
    let form = reqwest::Url::parse(&format!("http://x/?{body}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let req = Request {
        method,
        path,
        headers,
        form,
        body,
    };
    let index = {
        let mut r = recs.lock().unwrap();
        r.push(req.clone());
        r.len() - 1
    };
    let reply = handler(&req, index);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let resp = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.status,
        reply.content_type,
        reply.body.len(),
        reply.body
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await?;
    Ok(())
}
