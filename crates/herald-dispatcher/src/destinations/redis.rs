//! Redis streams: each delivery is one `XADD` (optionally `MAXLEN ~ n`) whose fields are the
//! webhook's headers and its `body`. Success is the entry id Redis answers with. Connections
//! (RESP2, `AUTH` and `SELECT` when the URL asks) are pooled: an attempt takes an idle one or
//! opens one, and gives it back only after a whole reply, so a connection cut mid-command (a
//! timeout, a restart) is never reused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use herald_core::destination as dest;

use super::{Failure, Outgoing, Resolver, Stream};
use crate::retry::ErrorClass;

/// Idle connections kept per broker.
const MAX_IDLE: usize = 32;
/// A reply line longer than this is not Redis talking.
const MAX_LINE: usize = 64 * 1024;

pub(crate) struct Redis {
    url: url::Url,
    db: u32,
    resolver: Arc<Resolver>,
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

type Connection = BufReader<Stream>;

/// One RESP reply, as far as Herald's commands need.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

impl Redis {
    pub(crate) fn new(url: url::Url, resolver: Arc<Resolver>, timeout: Duration) -> Result<Self, String> {
        let db = dest::redis_db(&url).map_err(|e| e.message)?;
        Ok(Self { url, db, resolver, timeout, idle: Mutex::default() })
    }

    /// Appends the delivery to `stream`; `Ok` once Redis answered with the entry's id.
    pub(crate) async fn xadd(&self, stream: &str, max_len: u64, message: &Outgoing<'_>) -> Result<(), Failure> {
        let mut conn = self.take().await?;
        let max_len = max_len.to_string();
        let mut args: Vec<&[u8]> = vec![b"XADD", stream.as_bytes()];
        if max_len != "0" {
            args.extend([b"MAXLEN".as_slice(), b"~", max_len.as_bytes()]);
        }
        args.push(b"*");
        for (name, value) in &message.headers {
            args.extend([name.as_bytes(), value.as_bytes()]);
        }
        args.extend([b"body".as_slice(), message.body]);
        match command(&mut conn, &args).await? {
            Reply::Bulk(Some(_)) => {
                self.give_back(conn);
                Ok(())
            }
            Reply::Error(e) => {
                self.give_back(conn);
                Err(refusal(&e))
            }
            other => Err(Failure::new(ErrorClass::Broker, format!("Redis answered XADD with {other:?}"))),
        }
    }

    async fn take(&self) -> Result<Connection, Failure> {
        if let Some(conn) = self.idle.lock().expect("redis pool").pop() {
            return Ok(conn);
        }
        let stream = tokio::time::timeout(self.timeout, self.resolver.connect(&self.url))
            .await
            .map_err(|_| Failure::new(ErrorClass::Timeout, "timed out connecting to Redis"))??;
        let mut conn = BufReader::new(stream);
        if let (user, Some(password)) = dest::credentials(&self.url) {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &user {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            if let Reply::Error(e) = command(&mut conn, &args).await? {
                return Err(refusal(&e));
            }
        }
        if self.db != 0 {
            let db = self.db.to_string();
            if let Reply::Error(e) = command(&mut conn, &[b"SELECT", db.as_bytes()]).await? {
                return Err(refusal(&e));
            }
        }
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("redis pool");
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

/// A Redis error reply as a failure: credentials (`NOAUTH`, `WRONGPASS`, `NOPERM`) are `auth`,
/// the rest `broker`.
fn refusal(error: &str) -> Failure {
    let code = error.split_whitespace().next().unwrap_or_default();
    let class = if matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM") { ErrorClass::Auth } else { ErrorClass::Broker };
    Failure::new(class, format!("Redis refused the write: {error}"))
}

fn lost(e: std::io::Error) -> Failure {
    Failure::new(ErrorClass::Connection, format!("connection to Redis failed: {e}"))
}

/// Sends one command (a RESP array of bulk strings) and reads its reply.
async fn command(conn: &mut Connection, args: &[&[u8]]) -> Result<Reply, Failure> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    conn.get_mut().write_all(&out).await.map_err(lost)?;
    conn.get_mut().flush().await.map_err(lost)?;
    read_reply(conn).await
}

async fn read_reply(conn: &mut Connection) -> Result<Reply, Failure> {
    let mut line = Vec::new();
    let n = (&mut *conn).take(MAX_LINE as u64).read_until(b'\n', &mut line).await.map_err(lost)?;
    if n == 0 {
        return Err(lost(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(Failure::new(ErrorClass::Broker, "Redis sent a malformed reply"));
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let malformed = || Failure::new(ErrorClass::Broker, format!("Redis sent a malformed reply: {text:?}"));
    match line[0] {
        b'+' => Ok(Reply::Simple(text)),
        b'-' => Ok(Reply::Error(text)),
        b':' => text.parse().map(Reply::Integer).map_err(|_| malformed()),
        b'$' => {
            let len: i64 = text.parse().map_err(|_| malformed())?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut data = vec![0; len as usize + 2];
            conn.read_exact(&mut data).await.map_err(lost)?;
            data.truncate(len as usize);
            Ok(Reply::Bulk(Some(data)))
        }
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_errors_are_auth_and_others_broker() {
        assert_eq!(refusal("WRONGPASS invalid username-password pair").class, ErrorClass::Auth);
        assert_eq!(refusal("NOAUTH Authentication required.").class, ErrorClass::Auth);
        let wrong_type = refusal("WRONGTYPE Operation against a key holding the wrong kind of value");
        assert_eq!(wrong_type.class, ErrorClass::Broker);
        assert!(wrong_type.message.contains("WRONGTYPE"));
    }
}
