//! AMQP 0-9-1 (RabbitMQ and other brokers of that protocol): each delivery is a persistent
//! message published to an exchange on a channel in confirm mode, `mandatory` so that a message
//! no queue takes comes back (`basic.return`) instead of vanishing. Success is the broker's
//! `basic.ack` for it; a `basic.nack`, a return, a channel or connection error is a failure.
//!
//! One connection and one channel per broker URL and exchange, shared by the subscriptions that
//! name them: publishes are pipelined on it, a writer task gives each its delivery tag in the
//! order it writes them, and a reader task settles them as confirms arrive. A connection that
//! fails fails what it had in flight and is opened again by the next attempt.
//!
//! The webhook's headers go in the message's `headers` table (and `content-type` in the
//! property of that name); `message-id` is the event id, `type` the event type, `timestamp` the
//! `webhook-timestamp`, `app-id` `herald`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};

use herald_core::destination as dest;

use super::{Failure, Outgoing, Resolver, Stream};
use crate::retry::ErrorClass;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// The largest frame Herald asks for (the broker may ask for less).
const FRAME_MAX: u32 = 128 * 1024;
/// The channel Herald publishes on.
const CHANNEL: u16 = 1;

pub(crate) struct Amqp {
    url: url::Url,
    vhost: String,
    resolver: Arc<Resolver>,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl Amqp {
    pub(crate) fn new(url: url::Url, resolver: Arc<Resolver>, timeout: Duration) -> Result<Self, String> {
        let vhost = dest::vhost(&url).map_err(|e| e.message)?;
        Ok(Self { url, vhost, resolver, timeout, connection: tokio::sync::Mutex::default() })
    }

    /// Publishes the delivery to `exchange` with `routing_key`; `Ok` once the broker confirmed
    /// it (stored by every queue it was routed to, if they are durable).
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Outgoing<'_>,
    ) -> Result<(), Failure> {
        if routing_key.len() > 255 {
            return Err(Failure::new(ErrorClass::Broker, "the routing key is over 255 bytes once rendered"));
        }
        let connection = self.connection().await?;
        let (done, confirmed) = oneshot::channel();
        let frames = publish_frames(exchange, routing_key, message, connection.frame_max);
        let pending = Pending {
            message_id: message.id.to_owned(),
            routing_key: routing_key.to_owned(),
            exchange: exchange.to_owned(),
            returned: None,
            done,
        };
        if connection.jobs.send((frames, pending)).is_err() {
            return Err(connection.failure().unwrap_or_else(|| lost("the connection closed")));
        }
        confirmed.await.unwrap_or_else(|_| Err(connection.failure().unwrap_or_else(|| lost("the connection closed"))))
    }

    /// The open connection, or a new one if there is none or it failed.
    async fn connection(&self) -> Result<Arc<Connection>, Failure> {
        let mut held = self.connection.lock().await;
        if let Some(connection) = &*held
            && connection.failure().is_none()
        {
            return Ok(connection.clone());
        }
        *held = None;
        let opened = tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| Failure::new(ErrorClass::Timeout, "timed out connecting to the AMQP broker"))??;
        let connection = Arc::new(opened);
        *held = Some(connection.clone());
        Ok(connection)
    }

    /// Connects, logs in, opens the vhost and a channel in confirm mode.
    async fn open(&self) -> Result<Connection, Failure> {
        let stream = self.resolver.connect(&self.url).await?;
        let (read, mut write) = tokio::io::split(stream);
        let mut read = BufReader::new(read);
        send(&mut write, b"AMQP\x00\x00\x09\x01").await?;

        let start = expect(&mut read, 0, (10, 10), "connection.start").await?;
        let mut c = Cursor::new(&start);
        c.skip(2)?; // version
        c.skip_table()?;
        let mechanisms = c.long_string()?;
        if !String::from_utf8_lossy(&mechanisms).split(' ').any(|m| m == "PLAIN") {
            return Err(Failure::new(ErrorClass::Auth, "the AMQP broker does not offer PLAIN authentication"));
        }
        let (user, password) = dest::credentials(&self.url);
        let (user, password) = (user.unwrap_or_else(|| "guest".into()), password.unwrap_or_else(|| "guest".into()));
        let mut args = Args::default();
        args.table(&[
            ("product", Field::Str("Herald")),
            ("version", Field::Str(herald_core::VERSION)),
            (
                "capabilities",
                Field::Table(vec![
                    ("publisher_confirms", Field::Bool(true)),
                    ("authentication_failure_close", Field::Bool(true)),
                    ("basic.nack", Field::Bool(true)),
                ]),
            ),
        ]);
        args.short_string("PLAIN");
        args.long_string(format!("\0{user}\0{password}").as_bytes());
        args.short_string("en_US");
        send(&mut write, &method(0, (10, 11), &args.0)).await?;

        let tune = expect(&mut read, 0, (10, 30), "connection.tune").await?;
        let mut c = Cursor::new(&tune);
        let _channel_max = c.u16()?;
        let frame_max = match c.u32()? {
            0 => FRAME_MAX,
            asked => asked.min(FRAME_MAX),
        };
        let mut args = Args::default();
        args.u16(1).u32(frame_max).u16(0); // one channel; no heartbeats (each publish has a timeout)
        send(&mut write, &method(0, (10, 31), &args.0)).await?;
        let mut args = Args::default();
        args.short_string(&self.vhost).short_string("").u8(0);
        send(&mut write, &method(0, (10, 40), &args.0)).await?;
        expect(&mut read, 0, (10, 41), "connection.open-ok").await?;
        let mut args = Args::default();
        args.short_string("");
        send(&mut write, &method(CHANNEL, (20, 10), &args.0)).await?;
        expect(&mut read, CHANNEL, (20, 11), "channel.open-ok").await?;
        send(&mut write, &method(CHANNEL, (85, 10), &[0])).await?;
        expect(&mut read, CHANNEL, (85, 11), "confirm.select-ok").await?;

        let state = Arc::new(Mutex::new(State::default()));
        let (jobs, queue) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(write, queue, state.clone()));
        let reader = tokio::spawn(read_loop(read, state.clone()));
        Ok(Connection { jobs, state, frame_max: frame_max as usize, tasks: [writer, reader] })
    }
}

/// An open connection with its channel in confirm mode.
struct Connection {
    jobs: mpsc::UnboundedSender<(Vec<u8>, Pending)>,
    state: Arc<Mutex<State>>,
    frame_max: usize,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Connection {
    fn failure(&self) -> Option<Failure> {
        self.state.lock().expect("amqp state").closed.clone()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A publish waiting for its confirm.
struct Pending {
    message_id: String,
    routing_key: String,
    exchange: String,
    /// Why the broker returned it, if it did (the ack that follows then settles it as failed).
    returned: Option<String>,
    done: oneshot::Sender<Result<(), Failure>>,
}

#[derive(Default)]
struct State {
    /// By delivery tag.
    pending: BTreeMap<u64, Pending>,
    /// Set once the connection failed: every publish then fails with it.
    closed: Option<Failure>,
}

impl State {
    fn fail(&mut self, failure: Failure) {
        for (_, pending) in std::mem::take(&mut self.pending) {
            let _ = pending.done.send(Err(failure.clone()));
        }
        self.closed.get_or_insert(failure);
    }

    fn settle(&mut self, tag: u64, multiple: bool, nacked: bool) {
        let tags: Vec<u64> = if multiple { self.pending.range(..=tag).map(|(t, _)| *t).collect() } else { vec![tag] };
        for tag in tags {
            let Some(pending) = self.pending.remove(&tag) else { continue };
            let result = match (&pending.returned, nacked) {
                (_, true) => Err(Failure::new(ErrorClass::Broker, "the AMQP broker refused the message (basic.nack)")),
                (Some(why), false) => Err(Failure::new(
                    ErrorClass::Broker,
                    format!(
                        "the AMQP broker routed the message to no queue ({why}): bind a queue to exchange {:?} for routing key {:?}",
                        pending.exchange, pending.routing_key
                    ),
                )),
                (None, false) => Ok(()),
            };
            let _ = pending.done.send(result);
        }
    }
}

fn lost(why: &str) -> Failure {
    Failure::new(ErrorClass::Connection, format!("connection to the AMQP broker failed: {why}"))
}

fn io_lost(e: std::io::Error) -> Failure {
    lost(&e.to_string())
}

/// Writes publishes in the order they come, giving each the next delivery tag: everything
/// queued is written at once.
async fn write_loop(
    mut write: WriteHalf<Stream>,
    mut queue: mpsc::UnboundedReceiver<(Vec<u8>, Pending)>,
    state: Arc<Mutex<State>>,
) {
    let mut next_tag = 1u64;
    let mut out = Vec::new();
    while let Some(first) = queue.recv().await {
        out.clear();
        let mut batch = vec![first];
        while batch.len() < 256
            && let Ok(more) = queue.try_recv()
        {
            batch.push(more);
        }
        {
            let mut state = state.lock().expect("amqp state");
            if state.closed.is_some() {
                let failure = state.closed.clone().expect("checked");
                for (_, pending) in batch {
                    let _ = pending.done.send(Err(failure.clone()));
                }
                return;
            }
            // Publishes whose attempt gave up (timed out) are forgotten now and then.
            if state.pending.len() > 4096 {
                state.pending.retain(|_, p| !p.done.is_closed());
            }
            for (frames, pending) in batch {
                state.pending.insert(next_tag, pending);
                next_tag += 1;
                out.extend_from_slice(&frames);
            }
        }
        if let Err(failure) = send(&mut write, &out).await {
            state.lock().expect("amqp state").fail(failure);
            return;
        }
    }
}

/// Writes `bytes` and flushes them (over TLS, a write may stay in the session's buffer).
async fn send(write: &mut WriteHalf<Stream>, bytes: &[u8]) -> Result<(), Failure> {
    write.write_all(bytes).await.map_err(io_lost)?;
    write.flush().await.map_err(io_lost)
}

/// What a `basic.return` being read has said so far.
struct Returning {
    reply: String,
    routing_key: String,
    message_id: Option<String>,
    body_left: u64,
}

/// Reads the broker's frames: confirms settle publishes, returns mark them, a channel or
/// connection close fails the connection.
async fn read_loop(mut read: BufReader<ReadHalf<Stream>>, state: Arc<Mutex<State>>) {
    let mut returning: Option<Returning> = None;
    let failure = loop {
        let (kind, _channel, payload) = match read_frame(&mut read).await {
            Ok(frame) => frame,
            Err(failure) => break failure,
        };
        match kind {
            FRAME_METHOD => {
                let mut c = Cursor::new(&payload);
                let (Ok(class), Ok(id)) = (c.u16(), c.u16()) else { break lost("malformed frame") };
                match (class, id) {
                    (60, 80) | (60, 120) => {
                        let (Ok(tag), Ok(bits)) = (c.u64(), c.u8()) else { break lost("malformed confirm") };
                        state.lock().expect("amqp state").settle(tag, bits & 1 == 1, id == 120);
                    }
                    (60, 50) => {
                        let code = c.u16().unwrap_or(0);
                        let text = c.short_string().unwrap_or_default();
                        let _exchange = c.short_string();
                        let routing_key = c.short_string().unwrap_or_default();
                        returning = Some(Returning {
                            reply: format!("{code} {text}"),
                            routing_key,
                            message_id: None,
                            body_left: 0,
                        });
                    }
                    (20, 40) | (10, 50) => {
                        let code = c.u16().unwrap_or(0);
                        let text = c.short_string().unwrap_or_default();
                        break closed_by_broker(code, &text);
                    }
                    _ => {} // connection.blocked / unblocked and the like: publishes time out meanwhile.
                }
            }
            FRAME_HEADER => {
                if let Some(r) = &mut returning {
                    let mut c = Cursor::new(&payload);
                    let _ = c.skip(4);
                    r.body_left = c.u64().unwrap_or(0);
                    r.message_id = message_id(&mut c);
                }
            }
            FRAME_BODY => {
                if let Some(r) = &mut returning {
                    r.body_left = r.body_left.saturating_sub(payload.len() as u64);
                }
            }
            _ => {}
        }
        if returning.as_ref().is_some_and(|r| r.message_id.is_some() && r.body_left == 0) {
            let r = returning.take().expect("checked");
            let mut state = state.lock().expect("amqp state");
            let found = state.pending.values_mut().find(|p| {
                p.returned.is_none() && Some(&p.message_id) == r.message_id.as_ref() && p.routing_key == r.routing_key
            });
            if let Some(p) = found {
                p.returned = Some(r.reply);
            }
        }
    };
    state.lock().expect("amqp state").fail(failure);
}

/// The failure a broker's `channel.close` or `connection.close` stands for.
fn closed_by_broker(code: u16, text: &str) -> Failure {
    let class = match code {
        403 => ErrorClass::Auth,
        530 if text.contains("refused") => ErrorClass::Auth,
        _ => ErrorClass::Broker,
    };
    Failure::new(class, format!("the AMQP broker closed the connection: {code} {text}"))
}

/// The `message-id` of a content header's properties (the cursor just past the body size).
fn message_id(c: &mut Cursor<'_>) -> Option<String> {
    let flags = c.u16().ok()?;
    // In order: content-type, content-encoding (short strings), headers (table),
    // delivery-mode, priority (octets), correlation-id, reply-to, expiration, message-id.
    for bit in (7..=15).rev() {
        if flags & (1 << bit) == 0 {
            continue;
        }
        match bit {
            13 => c.skip_table().ok()?,
            12 | 11 => c.skip(1).ok()?,
            7 => return c.short_string().ok(),
            _ => {
                c.short_string().ok()?;
            }
        }
    }
    Some(String::new())
}

/// Reads frames until the method `want` on `channel`; a `connection.close` or `channel.close`
/// instead is the broker's refusal, and a closed socket during login is taken for one.
async fn expect<R: tokio::io::AsyncRead + Unpin>(
    read: &mut R,
    channel: u16,
    want: (u16, u16),
    name: &str,
) -> Result<Vec<u8>, Failure> {
    loop {
        let (kind, on, payload) = read_frame(read).await.map_err(|f| {
            if want == (10, 30) {
                Failure::new(ErrorClass::Auth, "the AMQP broker closed the connection at login (wrong credentials?)")
            } else {
                f
            }
        })?;
        if kind != FRAME_METHOD {
            continue;
        }
        let mut c = Cursor::new(&payload);
        let got = (c.u16()?, c.u16()?);
        if got == (10, 50) || got == (20, 40) {
            let code = c.u16().unwrap_or(0);
            let text = c.short_string().unwrap_or_default();
            return Err(closed_by_broker(code, &text));
        }
        if got == want && on == channel {
            return Ok(payload[4..].to_vec());
        }
        return Err(lost(&format!("expected {name}, got method {}.{}", got.0, got.1)));
    }
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(read: &mut R) -> Result<(u8, u16, Vec<u8>), Failure> {
    let mut head = [0u8; 7];
    read.read_exact(&mut head).await.map_err(io_lost)?;
    let kind = head[0];
    let channel = u16::from_be_bytes([head[1], head[2]]);
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    if size > 4 * FRAME_MAX as usize {
        return Err(lost(&format!("a frame of {size} bytes")));
    }
    let mut payload = vec![0u8; size + 1];
    read.read_exact(&mut payload).await.map_err(io_lost)?;
    if payload.pop() != Some(FRAME_END) {
        return Err(lost("a frame without its end marker"));
    }
    if kind == FRAME_HEARTBEAT {
        return Ok((kind, channel, Vec::new()));
    }
    Ok((kind, channel, payload))
}

fn frame(kind: u8, channel: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
}

fn method(channel: u16, (class, id): (u16, u16), args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + args.len());
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(args);
    let mut out = Vec::with_capacity(payload.len() + 8);
    frame(FRAME_METHOD, channel, &payload, &mut out);
    out
}

/// `basic.publish` (mandatory), its content header and its body frames.
fn publish_frames(exchange: &str, routing_key: &str, message: &Outgoing<'_>, frame_max: usize) -> Vec<u8> {
    let mut args = Args::default();
    args.u16(0).short_string(exchange).short_string(routing_key).u8(0b01); // mandatory
    let mut out = method(CHANNEL, (60, 40), &args.0);

    let content_type = message.headers().find(|(n, _)| *n == "content-type").map_or("application/json", |(_, v)| v);
    let headers: Vec<(&str, Field<'_>)> =
        message.headers().filter(|(n, _)| *n != "content-type").map(|(n, v)| (n, Field::Str(v))).collect();
    let mut header = Args::default();
    header.u16(60).u16(0).u64(message.body.len() as u64);
    // content-type, headers, delivery-mode, message-id, timestamp, type, app-id
    header.u16((1 << 15) | (1 << 13) | (1 << 12) | (1 << 7) | (1 << 6) | (1 << 5) | (1 << 3));
    header.short_string(content_type);
    header.table(&headers);
    header.u8(2); // persistent
    header.short_string(message.id);
    header.u64(message.timestamp.max(0) as u64);
    header.short_string(message.event_type);
    header.short_string("herald");
    frame(FRAME_HEADER, CHANNEL, &header.0, &mut out);
    for chunk in message.body.chunks(frame_max.saturating_sub(8).max(1)) {
        frame(FRAME_BODY, CHANNEL, chunk, &mut out);
    }
    out
}

/// A field table's values, as far as Herald writes them.
enum Field<'a> {
    Str(&'a str),
    Bool(bool),
    Table(Vec<(&'a str, Field<'a>)>),
}

/// A method's arguments, encoded as AMQP 0-9-1 does.
#[derive(Default)]
struct Args(Vec<u8>);

impl Args {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// At most 255 bytes: longer text is cut at a character boundary.
    fn short_string(&mut self, v: &str) -> &mut Self {
        let mut end = v.len().min(255);
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        self.0.push(end as u8);
        self.0.extend_from_slice(&v.as_bytes()[..end]);
        self
    }
    fn long_string(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    fn table(&mut self, fields: &[(&str, Field<'_>)]) -> &mut Self {
        let mut inner = Args::default();
        for (name, value) in fields {
            inner.short_string(name);
            match value {
                Field::Str(s) => {
                    inner.u8(b'S').long_string(s.as_bytes());
                }
                Field::Bool(b) => {
                    inner.u8(b't').u8(u8::from(*b));
                }
                Field::Table(t) => {
                    inner.u8(b'F').table(t);
                }
            }
        }
        self.long_string(&inner.0)
    }
}

/// Reads what the broker sends.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Failure> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.data.len()).ok_or_else(|| lost("a short frame"))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }
    fn skip(&mut self, n: usize) -> Result<(), Failure> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Result<u8, Failure> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Failure> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")))
    }
    fn u32(&mut self) -> Result<u32, Failure> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("four bytes")))
    }
    fn u64(&mut self) -> Result<u64, Failure> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("eight bytes")))
    }
    fn short_string(&mut self) -> Result<String, Failure> {
        let n = self.u8()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn long_string(&mut self) -> Result<Vec<u8>, Failure> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn skip_table(&mut self) -> Result<(), Failure> {
        let n = self.u32()? as usize;
        self.skip(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing<'a>(body: &'a [u8], headers: &'a reqwest::header::HeaderMap) -> Outgoing<'a> {
        Outgoing {
            id: "evt_1",
            event_type: "order.paid",
            tenant: "acme",
            subscription_id: "sub_1",
            timestamp: 1_700_000_000,
            headers,
            body,
        }
    }

    fn headers() -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("webhook-id", "evt_1".parse().unwrap());
        headers
    }

    #[test]
    fn a_publish_is_a_method_a_header_and_body_frames_within_the_frame_size() {
        let body = vec![b'x'; 100];
        let frames = publish_frames("orders", "order.paid", &outgoing(&body, &headers()), 40);
        let mut read = &frames[..];
        let mut kinds = Vec::new();
        let mut carried = 0;
        while !read.is_empty() {
            let size = u32::from_be_bytes(read[3..7].try_into().unwrap()) as usize;
            assert_eq!(read[7 + size], FRAME_END);
            kinds.push(read[0]);
            if read[0] == FRAME_BODY {
                assert!(size <= 32, "body frames fit the frame size");
                carried += size;
            }
            if read[0] == FRAME_HEADER {
                let mut c = Cursor::new(&read[7..7 + size]);
                c.skip(4).unwrap();
                assert_eq!(c.u64().unwrap(), 100);
                assert_eq!(message_id(&mut c).as_deref(), Some("evt_1"), "a returned message is known by its id");
            }
            read = &read[8 + size..];
        }
        assert_eq!(kinds[..2], [FRAME_METHOD, FRAME_HEADER]);
        assert_eq!(carried, 100);
    }

    #[test]
    fn confirms_settle_one_or_every_earlier_publish_and_returns_fail_theirs() {
        let mut state = State::default();
        let mut receivers = Vec::new();
        for tag in 1..=4 {
            let (done, rx) = oneshot::channel();
            let pending = Pending {
                message_id: format!("evt_{tag}"),
                routing_key: "k".into(),
                exchange: "x".into(),
                returned: (tag == 2).then(|| "312 NO_ROUTE".to_owned()),
                done,
            };
            state.pending.insert(tag, pending);
            receivers.push(rx);
        }
        state.settle(3, true, false);
        state.settle(4, false, true);
        let results: Vec<_> = receivers.into_iter().map(|mut rx| rx.try_recv().unwrap()).collect();
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(results[1].as_ref().unwrap_err().message.contains("NO_ROUTE"));
        assert!(results[3].as_ref().unwrap_err().message.contains("nack"));
        assert!(state.pending.is_empty());
        assert_eq!(closed_by_broker(403, "ACCESS_REFUSED").class, ErrorClass::Auth);
        assert_eq!(closed_by_broker(404, "NOT_FOUND - no exchange").class, ErrorClass::Broker);
    }
}
