//! Redis streams: each delivery is one `XADD` (optionally `MAXLEN ~ n`) whose fields are the
//! webhook's headers and its `body`. Success is the entry id Redis answers with. Connections
//! (RESP2, `AUTH` and `SELECT` when the URL asks) are pooled per node: an attempt takes an idle
//! one or opens one, and gives it back only after a whole reply, so a connection cut
//! mid-command (a timeout, a restart) is never reused.
//!
//! The URL may name any node of a **Redis Cluster**: a node that does not hold the stream's slot
//! answers `MOVED` (or `ASK`, mid-migration) with the one that does, which is where the write
//! goes, and where the stream's next writes go first. A node that stops answering is forgotten,
//! so the next attempt asks the URL's node again and learns the new owner after a failover.
//!
//! Or it names **Sentinels** (`redis+sentinel://`): they are asked, in turn, for the master's
//! address (`SENTINEL get-master-addr-by-name`); a new connection checks with `ROLE` that the
//! server is still the master, and a master that stops answering or turns replica (`READONLY`)
//! is forgotten, so the next attempt asks the Sentinels again and follows a failover. Redis
//! replicates asynchronously: an entry the old master confirmed and did not pass on before it
//! died is lost with it, whatever the client does.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

use herald_core::destination as dest;

use super::{Failure, Outgoing, Resolver, Stream};
use crate::retry::ErrorClass;

/// Idle connections kept per node: as many as a replica makes attempts at once by default
/// (`HERALD_CONCURRENCY`). A pool smaller than the writes in flight closes the surplus after
/// each reply and opens it again for the next write: with 32, one subscription's default 64
/// in flight spent a connection's set-up and teardown on every other write.
const MAX_IDLE: usize = 256;
/// A reply line longer than this is not Redis talking.
const MAX_LINE: usize = 64 * 1024;
/// Redirections followed in one attempt (a cluster resharding moves a slot once).
const MAX_REDIRECTS: usize = 5;
/// Streams whose node a cluster's redirection told; beyond, the map starts again.
const MAX_MOVED: usize = 10_000;
/// Elements of an array reply read at most (`ROLE` lists the master's replicas).
const MAX_ARRAY: i64 = 1_024;

pub(crate) struct Redis {
    /// The URL given: a server, any node of a cluster, or the first Sentinel.
    url: url::Url,
    db: u32,
    sentinel: Option<Sentinel>,
    resolver: Arc<Resolver>,
    timeout: Duration,
    /// Idle connections, per node (`host:port`).
    idle: Mutex<HashMap<String, Vec<Connection>>>,
    /// Cluster: the node (`host:port`) each stream's slot was last redirected to.
    moved: Mutex<HashMap<String, String>>,
}

/// Sentinels, and the master they last named.
struct Sentinel {
    master: String,
    /// Each Sentinel's URL (`redis://` or `rediss://`, without credentials).
    sentinels: Vec<url::Url>,
    /// The master's URL (`redis://` or `rediss://` with the URL's credentials), at the
    /// Sentinel's address until [`at`] gives it the one the Sentinels name.
    base: url::Url,
    found: Mutex<Option<String>>,
}

type Connection = BufReader<Stream>;

/// One RESP reply, as far as Herald's commands need.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Redis {
    pub(crate) fn new(url: url::Url, resolver: Arc<Resolver>, timeout: Duration) -> Result<Self, String> {
        let (db, sentinel) = match dest::redis_target(&url).map_err(|e| e.message)? {
            dest::RedisTarget::Server { db } => (db, None),
            dest::RedisTarget::Sentinel { master, db, sentinels } => {
                let scheme = if dest::uses_tls(&url) { "rediss" } else { "redis" };
                // The master's URL: the given one's credentials, its scheme without Sentinel.
                let mut base = url.clone();
                base.set_scheme(scheme).map_err(|()| format!("cannot make a {scheme}:// URL of {}", url.scheme()))?;
                base.set_path("");
                base.set_query(None);
                let mut plain = base.clone();
                let _ = plain.set_username("");
                let _ = plain.set_password(None);
                let sentinels = sentinels.iter().filter_map(|address| at(&plain, address)).collect();
                (db, Some(Sentinel { master, sentinels, base, found: Mutex::default() }))
            }
        };
        Ok(Self { url, db, sentinel, resolver, timeout, idle: Mutex::default(), moved: Mutex::default() })
    }

    /// Appends the delivery to `stream`; `Ok` once Redis answered with the entry's id.
    pub(crate) async fn xadd(&self, stream: &str, max_len: u64, message: &Outgoing<'_>) -> Result<(), Failure> {
        let max_len = max_len.to_string();
        let mut args: Vec<&[u8]> = vec![b"XADD", stream.as_bytes()];
        if max_len != "0" {
            args.extend([b"MAXLEN".as_slice(), b"~", max_len.as_bytes()]);
        }
        args.push(b"*");
        for (name, value) in message.headers() {
            args.extend([name.as_bytes(), value.as_bytes()]);
        }
        args.extend([b"body".as_slice(), message.body]);
        let mut node = self.node_for(stream).await?;
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let key = address(&node);
            let sent = async {
                let mut conn = self.take(&node, &key).await?;
                if asking {
                    command(&mut conn, &[b"ASKING"]).await?;
                }
                let reply = command(&mut conn, &args).await?;
                Ok::<_, Failure>((conn, reply))
            };
            let (conn, reply) = match sent.await {
                Ok(sent) => sent,
                Err(failure) => {
                    self.lost(stream, &key);
                    return Err(failure);
                }
            };
            match reply {
                Reply::Bulk(Some(_)) => {
                    self.give_back(&key, conn);
                    return Ok(());
                }
                Reply::Error(e) => {
                    self.give_back(&key, conn);
                    let Some((moved, to)) = redirection(&e) else {
                        if e.starts_with("READONLY") {
                            self.lost(stream, &key);
                        }
                        return Err(refusal(&e));
                    };
                    node = at(&self.url, to).ok_or_else(|| {
                        Failure::new(ErrorClass::Broker, format!("Redis redirected the write to {to:?}, not host:port"))
                    })?;
                    if moved {
                        let mut routes = self.moved.lock().expect("redis routes");
                        if routes.len() >= MAX_MOVED {
                            routes.clear();
                        }
                        routes.insert(stream.to_owned(), address(&node));
                    }
                    asking = !moved;
                }
                other => return Err(Failure::new(ErrorClass::Broker, format!("Redis answered XADD with {other:?}"))),
            }
        }
        Err(Failure::new(
            ErrorClass::Broker,
            format!("Redis redirected the write more than {MAX_REDIRECTS} times (the cluster is changing its slots)"),
        ))
    }

    /// Where `stream`'s write goes first: the node a cluster last redirected it to, the master
    /// the Sentinels name, or the URL's server.
    async fn node_for(&self, stream: &str) -> Result<url::Url, Failure> {
        if let Some(to) = self.moved.lock().expect("redis routes").get(stream) {
            if let Some(node) = at(&self.url, to) {
                return Ok(node);
            }
        }
        match &self.sentinel {
            Some(sentinel) => self.master(sentinel).await,
            None => Ok(self.url.clone()),
        }
    }

    /// The master the Sentinels name: the one found last, or asked of each in turn.
    async fn master(&self, sentinel: &Sentinel) -> Result<url::Url, Failure> {
        let found = sentinel.found.lock().expect("redis master").clone();
        if let Some(node) = found.and_then(|address| at(&sentinel.base, &address)) {
            return Ok(node);
        }
        let mut last = String::from("no Sentinel given");
        for url in &sentinel.sentinels {
            let asked = async {
                let mut conn = self.open(url).await?;
                command(&mut conn, &[b"SENTINEL", b"get-master-addr-by-name", sentinel.master.as_bytes()]).await
            };
            let named = match asked.await {
                Ok(Reply::Array(Some(parts))) => match parts.as_slice() {
                    [Reply::Bulk(Some(host)), Reply::Bulk(Some(port))] => {
                        let host = String::from_utf8_lossy(host);
                        let host = if host.contains(':') { format!("[{host}]") } else { host.into_owned() };
                        format!("{host}:{}", String::from_utf8_lossy(port))
                    }
                    _ => {
                        last = format!("{}: an answer that is not host and port", address(url));
                        continue;
                    }
                },
                Ok(Reply::Array(None) | Reply::Bulk(None)) => {
                    last = format!("{} knows no master named {:?}", address(url), sentinel.master);
                    continue;
                }
                Ok(other) => {
                    last = format!("{} answered {other:?}", address(url));
                    continue;
                }
                Err(failure) => {
                    last = format!("{}: {}", address(url), failure.message);
                    continue;
                }
            };
            if let Some(node) = at(&sentinel.base, &named) {
                *sentinel.found.lock().expect("redis master") = Some(named);
                return Ok(node);
            }
            last = format!("{} named the master {named:?}, not host:port", address(url));
        }
        Err(Failure::new(ErrorClass::Connection, format!("no Sentinel named the master: {last}")))
    }

    /// An idle connection to `node`, or a new one (authenticated, its database selected, and
    /// checked to be the master when the Sentinels named it).
    async fn take(&self, node: &url::Url, key: &str) -> Result<Connection, Failure> {
        if let Some(conn) = self.idle.lock().expect("redis pool").get_mut(key).and_then(Vec::pop) {
            return Ok(conn);
        }
        let mut conn = self.open(node).await?;
        if let (user, Some(password)) = dest::credentials(node) {
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
        if self.sentinel.is_some() {
            match command(&mut conn, &[b"ROLE"]).await? {
                Reply::Array(Some(role)) if matches!(role.first(), Some(Reply::Bulk(Some(r))) if r == b"master") => {}
                other => {
                    return Err(Failure::new(
                        ErrorClass::Broker,
                        format!(
                            "{key}, named master by the Sentinels, is not the master (ROLE: {other:?}); a failover is under way"
                        ),
                    ));
                }
            }
        }
        Ok(conn)
    }

    /// A new connection to `url`'s server, within the timeout.
    async fn open(&self, url: &url::Url) -> Result<Connection, Failure> {
        let stream = tokio::time::timeout(self.timeout, self.resolver.connect(url)).await.map_err(|_| {
            Failure::new(ErrorClass::Timeout, format!("timed out connecting to Redis at {}", address(url)))
        })??;
        Ok(BufReader::new(stream))
    }

    fn give_back(&self, key: &str, conn: Connection) {
        let mut idle = self.idle.lock().expect("redis pool");
        let pool = idle.entry(key.to_owned()).or_default();
        if pool.len() < MAX_IDLE {
            pool.push(conn);
        }
    }

    /// `key`'s node failed `stream`'s write or turned replica: its idle connections go, and
    /// neither the stream's redirection nor the Sentinels' answer point to it any more.
    fn lost(&self, stream: &str, key: &str) {
        self.idle.lock().expect("redis pool").remove(key);
        let mut routes = self.moved.lock().expect("redis routes");
        if routes.get(stream).is_some_and(|to| to == key) {
            routes.remove(stream);
        }
        drop(routes);
        if let Some(sentinel) = &self.sentinel {
            let mut found = sentinel.found.lock().expect("redis master");
            if found.as_deref() == Some(key) {
                *found = None;
            }
        }
    }
}

/// `MOVED <slot> <host:port>` → `(true, host:port)`; `ASK …` → `(false, …)`.
fn redirection(error: &str) -> Option<(bool, &str)> {
    let mut words = error.split_whitespace();
    let moved = match words.next()? {
        "MOVED" => true,
        "ASK" => false,
        _ => return None,
    };
    let _slot = words.next()?;
    Some((moved, words.next()?))
}

/// `base` (scheme, credentials) at `address` (`host:port`, `[v6]:port` or Redis's `v6:port`).
fn at(base: &url::Url, address: &str) -> Option<url::Url> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
    if host.is_empty() {
        return None;
    }
    let mut url = base.clone();
    url.set_host(Some(&host)).ok()?;
    url.set_port(Some(port)).ok()?;
    Some(url)
}

/// `host:port` of a node's URL: what its connections are pooled under.
fn address(url: &url::Url) -> String {
    format!("{}:{}", url.host_str().unwrap_or_default(), dest::port(url))
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

fn read_reply(conn: &mut Connection) -> Pin<Box<dyn Future<Output = Result<Reply, Failure>> + Send + '_>> {
    Box::pin(async move {
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
                if len > MAX_LINE as i64 * 1024 {
                    return Err(malformed());
                }
                let mut data = vec![0; len as usize + 2];
                conn.read_exact(&mut data).await.map_err(lost)?;
                data.truncate(len as usize);
                Ok(Reply::Bulk(Some(data)))
            }
            b'*' => {
                let len: i64 = text.parse().map_err(|_| malformed())?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                if len > MAX_ARRAY {
                    return Err(malformed());
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(read_reply(conn).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(malformed()),
        }
    })
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

    #[test]
    fn cluster_redirections_name_the_node_to_write_to() {
        assert_eq!(redirection("MOVED 3999 127.0.0.1:6381"), Some((true, "127.0.0.1:6381")));
        assert_eq!(redirection("ASK 3999 10.0.0.2:7000"), Some((false, "10.0.0.2:7000")));
        assert_eq!(redirection("WRONGTYPE Operation against a key"), None);
        let base = url::Url::parse("rediss://app:pw@seed.example:6379/0").unwrap();
        let node = at(&base, "10.0.0.2:7000").unwrap();
        assert_eq!(node.as_str(), "rediss://app:pw@10.0.0.2:7000/0", "the credentials and scheme stay");
        assert_eq!(address(&node), "10.0.0.2:7000");
        assert_eq!(at(&base, "::1:7001").unwrap().host_str(), Some("[::1]"));
        assert_eq!(at(&base, "[::1]:7001").unwrap().port(), Some(7001));
        assert!(at(&base, "no-port").is_none());
        assert!(at(&base, ":7000").is_none());
    }
}
