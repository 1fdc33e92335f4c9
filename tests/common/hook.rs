//! A webhook receiver on loopback: keeps every POST's headers and body, answers 200
//! (or 503 for the next `fail` requests, as a chat bridge that is down).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub struct Hit {
    pub signature: Option<String>,
    pub body: String,
}

#[derive(Clone)]
pub struct Hook {
    pub url: String,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    pub fail: Arc<AtomicUsize>,
}

impl Hook {
    pub async fn start() -> Hook {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = Hook {
            url: format!("http://{}/hook", l.local_addr().unwrap()),
            hits: Arc::default(),
            fail: Arc::default(),
        };
        let h = hook.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let h = h.clone();
                            async move {
                                let signature = req
                                    .headers()
                                    .get("x-mergequeue-signature")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                                let body =
                                    String::from_utf8_lossy(&body.unwrap_or_default()).to_string();
                                let left = h.fail.load(Ordering::SeqCst);
                                let status = if left > 0 {
                                    h.fail.store(left - 1, Ordering::SeqCst);
                                    503
                                } else {
                                    h.hits.lock().unwrap().push(Hit { signature, body });
                                    200
                                };
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        hook
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}
