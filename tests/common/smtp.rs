//! A real SMTP server on loopback for the notification tests: the protocol is the
//! `mailin` crate's (an SMTP state machine), the sockets are plain std threads. Every
//! accepted message is kept; `defer` makes the next N messages fail with a 451, as a
//! relay that is down for a while.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mailin::{response, Handler, Response, SessionBuilder};

#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

#[derive(Clone)]
pub struct Smtp {
    pub addr: String,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    pub defer: Arc<AtomicUsize>,
}

struct Collect {
    mails: Arc<Mutex<Vec<Mail>>>,
    defer: Arc<AtomicUsize>,
    cur: Mail,
}

impl Handler for Collect {
    fn data_start(&mut self, _domain: &str, from: &str, _8bit: bool, to: &[String]) -> Response {
        self.cur = Mail {
            from: from.to_string(),
            to: to.to_vec(),
            data: String::new(),
        };
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.cur.data.push_str(&String::from_utf8_lossy(buf));
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let left = self.defer.load(Ordering::SeqCst);
        if left > 0 {
            self.defer.store(left - 1, Ordering::SeqCst);
            return response::INTERNAL_ERROR;
        }
        self.mails
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.cur));
        response::OK
    }
}

impl Smtp {
    pub fn start() -> Smtp {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let smtp = Smtp {
            addr: l.local_addr().unwrap().to_string(),
            mails: Arc::default(),
            defer: Arc::default(),
        };
        let s = smtp.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let ip: IpAddr = conn.peer_addr().map_or([127, 0, 0, 1].into(), |a| a.ip());
                    let handler = Collect {
                        mails: s.mails.clone(),
                        defer: s.defer.clone(),
                        cur: Mail::default(),
                    };
                    let mut session = SessionBuilder::new("smtp.test").build(ip, handler);
                    let mut out = conn.try_clone().unwrap();
                    let mut input = BufReader::new(conn);
                    if session.greeting().write_to(&mut out).is_err() {
                        return;
                    }
                    let mut line = vec![];
                    loop {
                        line.clear();
                        match input.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let r = session.process(&line);
                        match r.action {
                            mailin::Action::NoReply => continue,
                            mailin::Action::Close => {
                                let _ = r.write_to(&mut out);
                                let _ = out.flush();
                                return;
                            }
                            _ => {
                                if r.write_to(&mut out).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        smtp
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}
