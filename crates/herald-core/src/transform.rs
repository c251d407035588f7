//! Transformations: a subscription's JavaScript function `handler(webhook)`, run on each
//! delivery before it is signed, in an embedded QuickJS engine with a memory limit and a time
//! limit per call. The signature is Svix's: `webhook` is `{method, url, payload, eventType,
//! headers}`; the function returns it changed (`payload` is what is sent, `method` `POST` or
//! `PUT`, `url` another endpoint, `headers` more request headers), or sets `cancel: true` to
//! send nothing.
//!
//! A script that throws, runs past its time or allocates past its memory fails that call with a
//! [`Failure`] saying which; the engine it ran in is dropped, and nothing else is affected.
//! Engines (a runtime, a context and the compiled script) are pooled per transformation, since
//! making one costs far more than a trivial call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rquickjs::{CatchResultExt as _, Context, Function, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The longest source accepted, in bytes.
pub const MAX_SOURCE: usize = 64 * 1024;
/// Time one call may run.
pub const TIME_LIMIT: Duration = Duration::from_millis(100);
/// CPU time a call may take on the async runtime's thread that asked for it (see
/// [`Transformation::run_async`]); past it, the call is made again on a transformation thread.
/// CPU time, not time on the clock: on a busy machine a thread is often descheduled for longer
/// than this, through no fault of the script.
pub const INLINE_BUDGET: Duration = Duration::from_millis(2);
/// Calls past [`INLINE_BUDGET`] in a row after which every call of that transformation goes to
/// the transformation threads. More than one, because a call now and then is charged for the
/// kernel's work (a network interrupt served on its thread) through no fault of the script.
pub const INLINE_STRIKES: u32 = 3;
/// Memory one engine may allocate (the script, its objects, the webhook in and out).
pub const MEMORY_LIMIT: usize = 16 * 1024 * 1024;
/// Idle engines kept over every transformation of the process; beyond it an engine is dropped
/// after its call and the next call makes one.
const MAX_IDLE_ENGINES: usize = 256;
static IDLE_ENGINES: AtomicUsize = AtomicUsize::new(0);

type Job = Box<dyn FnOnce() + Send>;

/// The threads transformations run on, one per core, fed from one queue.
struct Pool {
    jobs: std::sync::mpsc::Sender<Job>,
    threads: usize,
}

static POOL: std::sync::LazyLock<Pool> = std::sync::LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(1);
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..threads {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name(format!("herald-transform-{i}"))
            .spawn(move || {
                loop {
                    let job = queue.lock().expect("transformation queue").recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })
            .expect("a transformation thread starts");
    }
    Pool { jobs, threads }
});

/// Why a transformation failed. Its class goes into the attempt record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The source does not compile, or defines no `handler` function.
    #[error("the transformation does not compile: {0}")]
    Syntax(String),
    /// `handler` threw.
    #[error("the transformation threw: {0}")]
    Threw(String),
    /// It ran past [`TIME_LIMIT`].
    #[error("the transformation ran past its time limit ({} ms)", TIME_LIMIT.as_millis())]
    TimedOut,
    /// It allocated past [`MEMORY_LIMIT`] (or recursed too deep).
    #[error("the transformation ran out of memory ({} MiB) or stack", MEMORY_LIMIT >> 20)]
    OutOfMemory,
    /// It returned something that is not a webhook.
    #[error("the transformation returned an invalid webhook: {0}")]
    Invalid(String),
}

/// What the handler is given.
#[derive(Debug, Clone)]
pub struct Webhook<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// The webhook body as JSON: handed to the engine as text beside the rest, and parsed
    /// there only if the handler reads or replaces it.
    pub payload: &'a serde_json::value::RawValue,
    /// `eventType` to the handler.
    pub event_type: &'a str,
    pub headers: &'a BTreeMap<String, String>,
}

/// What a call made of the webhook.
#[derive(Debug)]
pub enum Outcome {
    /// The handler read neither the payload nor the headers and changed nothing it may send
    /// (it returned the webhook as it came): it goes as it came.
    Unchanged,
    /// What the handler returned, checked.
    Changed(Transformed),
}

/// What the handler returned.
#[derive(Debug, Clone, Serialize)]
pub struct Transformed {
    pub method: String,
    pub url: String,
    /// Exactly as `JSON.stringify` wrote it: an unchanged payload keeps its keys' order.
    pub payload: Box<serde_json::value::RawValue>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub cancel: bool,
}

/// The handler's raw answer, checked into a [`Transformed`].
#[derive(Deserialize)]
struct Answer {
    method: Option<serde_json::Value>,
    url: Option<serde_json::Value>,
    payload: Option<Box<serde_json::value::RawValue>>,
    headers: Option<serde_json::Value>,
    cancel: Option<serde_json::Value>,
}

/// A compiled transformation, with its pool of engines.
pub struct Transformation {
    source: Arc<str>,
    idle: Mutex<Vec<Engine>>,
    /// Calls in a row that ran past [`INLINE_BUDGET`].
    strikes: AtomicU32,
    /// [`INLINE_STRIKES`] were reached: calls go to the transformation threads.
    slow: AtomicBool,
}

impl std::fmt::Debug for Transformation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformation").field("bytes", &self.source.len()).finish_non_exhaustive()
    }
}

impl Drop for Transformation {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().map(|v| v.len()).unwrap_or(0);
        IDLE_ENGINES.fetch_sub(idle, Ordering::Relaxed);
    }
}

/// One runtime with the script loaded.
struct Engine {
    context: Context,
    /// When the current call must stop, in nanoseconds since `epoch` (0: no call running).
    deadline: Arc<AtomicU64>,
    /// When the current call must stop, in nanoseconds of its thread's CPU time (0: none).
    cpu_deadline: Arc<AtomicU64>,
    epoch: Instant,
    _runtime: Runtime,
}

/// The CPU time the calling thread has used, in nanoseconds (0 where it cannot be read, which
/// leaves only the time limit on the clock).
fn thread_cpu_nanos() -> u64 {
    cpu_time::ThreadTime::try_now().map_or(0, |t| t.as_duration().as_nanos() as u64)
}

/// How long a reading of a runtime thread's CPU clock stands for the start of the calls made on
/// it after: a reading is a system call (0.44 µs on this VM idle, more under load; 2 % of the
/// dispatcher's samples in a benchmark of trivial scripts), where the wall clock costs 0.05 µs.
const CPU_READING_KEPT: Duration = Duration::from_micros(500);

/// This thread's CPU time in nanoseconds as read at most [`CPU_READING_KEPT`] ago: no more than
/// it is now, and less by at most that (a thread uses no more CPU time than passes). As a
/// call's start it charges the call for at most that much more than it used, so a call is held
/// to its budget or less, and one that used under `INLINE_BUDGET − CPU_READING_KEPT` is never
/// charged past it.
fn thread_cpu_recent() -> u64 {
    thread_local! {
        static LAST: std::cell::Cell<Option<(Instant, u64)>> = const { std::cell::Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| match last.get() {
        Some((at, cpu)) if now.duration_since(at) <= CPU_READING_KEPT => cpu,
        _ => {
            let cpu = thread_cpu_nanos();
            last.set(Some((now, cpu)));
            cpu
        }
    })
}

/// The CPU time this thread used since `started` (its CPU time then), `clock` being when that
/// was. Read only when more than [`INLINE_BUDGET`] passed on the clock, since a thread cannot
/// use more CPU time than passes: a quick call costs one read, not two.
fn cpu_since(started: u64, clock: Instant) -> Duration {
    let passed = clock.elapsed();
    if passed <= INLINE_BUDGET {
        return passed;
    }
    Duration::from_nanos(thread_cpu_nanos().saturating_sub(started))
}

/// Wraps the handler: plain data in and out. The method, URL and event type come as strings;
/// the headers and the payload as JSON text, parsed when `webhook.headers` or `webhook.payload`
/// is first read. A handler that reads neither and changes nothing (it returns the webhook as
/// it came, perhaps after looking at its method, URL or event type) costs no parse and no
/// `JSON.stringify`: the answer is `0`, and the webhook is sent exactly as it came. Otherwise the answer is JSON text: `=` and the webhook without its payload, when the
/// payload was neither read nor replaced (it is sent as it came), or `~` and the whole webhook.
const WRAPPER: &str = r#"
;if (typeof handler !== "function") { throw new Error("the script must define a function named handler"); }
(function () {
  // A call's state, on its webhook under a key the handler is not given, so that the accessors
  // are made once per engine rather than once per call.
  const STATE = Symbol("herald");
  const getPayload = function () {
    const s = this[STATE];
    if (!s.parsed) { s.payload = JSON.parse(s.raw); s.parsed = true; }
    return s.payload;
  };
  const setPayload = function (value) { const s = this[STATE]; s.payload = value; s.parsed = true; };
  const getHeaders = function () {
    const s = this[STATE];
    if (!s.headersRead) { s.headers = JSON.parse(s.rawHeaders); s.headersRead = true; }
    return s.headers;
  };
  const setHeaders = function (value) { const s = this[STATE]; s.headers = value; s.headersRead = true; };
  const PAYLOAD = { get: getPayload, set: setPayload, enumerable: true, configurable: true };
  const HEADERS = { get: getHeaders, set: setHeaders, enumerable: true, configurable: true };
  globalThis.__heraldRun = function (method, url, eventType, rawHeaders, raw) {
    const state = { raw, rawHeaders, payload: undefined, parsed: false, headers: undefined, headersRead: false };
    const webhook = { method, url };
    Object.defineProperty(webhook, "payload", PAYLOAD);
    webhook.eventType = eventType;
    Object.defineProperty(webhook, "headers", HEADERS);
    Object.defineProperty(webhook, STATE, { value: state });
    const out = handler(webhook);
    const result = out === undefined ? webhook : out;
    if (result !== webhook || state.parsed) {
      return "~" + JSON.stringify(result);
    }
    const held = Object.getOwnPropertyDescriptor(webhook, "payload");
    if (held === undefined || held.get !== getPayload) {
      return "~" + JSON.stringify(result);
    }
    const kept = Object.getOwnPropertyDescriptor(webhook, "headers");
    if (!state.headersRead && kept !== undefined && kept.get === getHeaders && webhook.method === method
        && webhook.url === url && webhook.cancel === undefined) {
      return 0;
    }
    delete webhook.payload;
    return "=" + JSON.stringify(webhook);
  };
})();
"#;

/// What the engine answered (see [`WRAPPER`]).
enum Reply {
    /// Nothing was read or changed.
    Unchanged,
    /// JSON text, after `=` or `~`.
    Text(String),
}

impl Engine {
    fn new(source: &str) -> Result<Self, Failure> {
        // The process's allocator (mimalloc) rather than the C library's: QuickJS allocates for
        // every object JSON.parse makes, and glibc's malloc took a fifth of a call. The memory
        // limit is QuickJS's own accounting, kept whatever allocates.
        let runtime = Runtime::new_with_alloc(rquickjs::allocator::RustAllocator)
            .map_err(|e| Failure::Syntax(format!("cannot start the engine: {e}")))?;
        runtime.set_memory_limit(MEMORY_LIMIT);
        runtime.set_max_stack_size(256 * 1024);
        let deadline = Arc::new(AtomicU64::new(0));
        let cpu_deadline = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let (watched, watched_cpu) = (deadline.clone(), cpu_deadline.clone());
        runtime.set_interrupt_handler(Some(Box::new(move || {
            let until = watched.load(Ordering::Relaxed);
            let cpu_until = watched_cpu.load(Ordering::Relaxed);
            (until != 0 && epoch.elapsed().as_nanos() as u64 > until)
                || (cpu_until != 0 && thread_cpu_nanos() > cpu_until)
        })));
        let context = Context::full(&runtime).map_err(|e| Failure::Syntax(format!("cannot start the engine: {e}")))?;
        let engine = Self { context, deadline, cpu_deadline, epoch, _runtime: runtime };
        let mut script = String::with_capacity(source.len() + WRAPPER.len());
        script.push_str(source);
        script.push_str(WRAPPER);
        engine
            .timed(None, || engine.context.with(|ctx| ctx.eval::<(), _>(script).catch(&ctx).map_err(|e| e.to_string())))
            .map_err(|e| match e {
                Failure::Threw(message) => Failure::Syntax(message),
                other => other,
            })?;
        Ok(engine)
    }

    /// Runs `call` with [`TIME_LIMIT`] armed and, if `cpu` is `(limit, started)`, a limit of
    /// `limit` on this thread's CPU time from `started` (its CPU time, in nanoseconds, when the
    /// call began); classifies what it threw.
    fn timed(&self, cpu: Option<(Duration, u64)>, call: impl FnOnce() -> Result<(), String>) -> Result<(), Failure> {
        let budget = self.epoch.elapsed() + TIME_LIMIT;
        self.deadline.store(budget.as_nanos() as u64, Ordering::Relaxed);
        if let Some((limit, cpu_started)) = cpu {
            self.cpu_deadline.store(cpu_started + limit.as_nanos() as u64, Ordering::Relaxed);
        }
        let result = call();
        let late = self.epoch.elapsed() > budget;
        self.deadline.store(0, Ordering::Relaxed);
        self.cpu_deadline.store(0, Ordering::Relaxed);
        result.map_err(|message| classify(&message, late))
    }

    fn call(&self, input: &Input<'_>, cpu: Option<(Duration, u64)>) -> Result<Reply, Failure> {
        let mut reply = Reply::Unchanged;
        self.timed(cpu, || {
            self.context.with(|ctx| {
                let run: Function = ctx.globals().get("__heraldRun").catch(&ctx).map_err(|e| e.to_string())?;
                let args = (input.method, input.url, input.event_type, input.headers, input.payload.get());
                let value: rquickjs::Value = run.call(args).catch(&ctx).map_err(|e| e.to_string())?;
                if let Some(text) = value.as_string() {
                    reply = Reply::Text(text.to_string().map_err(|e| e.to_string())?);
                } else if value.as_int() != Some(0) {
                    reply = Reply::Text(String::new());
                }
                Ok(())
            })
        })?;
        Ok(reply)
    }
}

/// A call's arguments: the webhook, its headers as JSON text.
struct Input<'a> {
    method: &'a str,
    url: &'a str,
    event_type: &'a str,
    headers: &'a str,
    payload: &'a RawValue,
}

/// [`Input`] owned, to go to a transformation thread.
struct OwnedInput {
    method: String,
    url: String,
    event_type: String,
    headers: String,
    payload: Box<RawValue>,
}

impl Webhook<'_> {
    /// The call's arguments, `headers` being this webhook's headers as JSON text.
    fn input<'b>(&'b self, headers: &'b str) -> Input<'b> {
        Input { method: self.method, url: self.url, event_type: self.event_type, headers, payload: self.payload }
    }
}

impl Input<'_> {
    fn owned(&self) -> OwnedInput {
        OwnedInput {
            method: self.method.to_owned(),
            url: self.url.to_owned(),
            event_type: self.event_type.to_owned(),
            headers: self.headers.to_owned(),
            payload: self.payload.to_owned(),
        }
    }
}

impl OwnedInput {
    fn input(&self) -> Input<'_> {
        Input {
            method: &self.method,
            url: &self.url,
            event_type: &self.event_type,
            headers: &self.headers,
            payload: &self.payload,
        }
    }
}

/// `headers` as JSON text (no allocation for none, the usual case).
fn headers_json(headers: &BTreeMap<String, String>) -> Result<std::borrow::Cow<'static, str>, Failure> {
    if headers.is_empty() {
        return Ok("{}".into());
    }
    serde_json::to_string(headers).map(Into::into).map_err(|e| Failure::Invalid(e.to_string()))
}

fn classify(message: &str, late: bool) -> Failure {
    if late || message.contains("interrupted") {
        Failure::TimedOut
    } else if ["out of memory", "stack overflow", "Maximum call stack size exceeded"]
        .iter()
        .any(|m| message.contains(m))
    {
        Failure::OutOfMemory
    } else {
        let first = message.lines().next().unwrap_or(message).trim();
        Failure::Threw(first.chars().take(500).collect())
    }
}

impl Transformation {
    /// Compiles `source`: it must define `handler`.
    pub fn compile(source: &str) -> Result<Self, Failure> {
        if source.len() > MAX_SOURCE {
            return Err(Failure::Syntax(format!("the source is over {} KiB", MAX_SOURCE / 1024)));
        }
        let engine = Engine::new(source)?;
        let transformation = Self {
            source: source.into(),
            idle: Mutex::new(Vec::new()),
            strikes: AtomicU32::new(0),
            slow: AtomicBool::new(false),
        };
        transformation.give_back(engine);
        Ok(transformation)
    }

    /// Runs the handler on `webhook`, on this thread: what would be sent.
    pub fn run(&self, webhook: &Webhook<'_>) -> Result<Transformed, Failure> {
        let headers = headers_json(webhook.headers)?;
        let engine = self.engine()?;
        let input = webhook.input(&headers);
        Ok(match self.run_json(engine, &input, None)? {
            Outcome::Unchanged => Transformed {
                method: webhook.method.to_owned(),
                url: webhook.url.to_owned(),
                payload: webhook.payload.to_owned(),
                headers: webhook.headers.clone(),
                cancel: false,
            },
            Outcome::Changed(transformed) => transformed,
        })
    }

    /// Runs the handler on `webhook` from the async runtime. A call runs first on the thread
    /// that asked, with [`INLINE_BUDGET`] of CPU time for its limit and an engine already made,
    /// since handing it to another thread and back costs more than a short script does. One
    /// that is stopped at that budget is made again on one of the process's transformation
    /// threads (as many as there are cores) with the whole [`TIME_LIMIT`]. After
    /// [`INLINE_STRIKES`] calls in a row past the budget (a quick call anywhere starts the
    /// count again), every call of this transformation goes there. So a runaway script holds a
    /// runtime thread for the budget a few times, and a transformation thread for its time
    /// limit per call. A transformation has at most as many engines busy as there are threads
    /// of both kinds.
    pub async fn run_async(self: &Arc<Self>, webhook: &Webhook<'_>) -> Result<Outcome, Failure> {
        let headers = headers_json(webhook.headers)?;
        if !self.slow.load(Ordering::Relaxed)
            && let Some(engine) = self.idle_engine()
        {
            let input = webhook.input(&headers);
            let (started, clock) = (thread_cpu_recent(), Instant::now());
            let result = self.run_json(engine, &input, Some((INLINE_BUDGET, started)));
            let stopped = matches!(result, Err(Failure::TimedOut));
            let used = cpu_since(started, clock);
            if used > INLINE_BUDGET || stopped {
                if self.strikes.fetch_add(1, Ordering::Relaxed) + 1 >= INLINE_STRIKES
                    && !self.slow.swap(true, Ordering::Relaxed)
                {
                    tracing::info!(
                        cpu_ms = used.as_secs_f64() * 1e3,
                        budget_ms = INLINE_BUDGET.as_millis() as u64,
                        "a transformation took longer than its budget on the delivering thread {INLINE_STRIKES} times in a row: its calls now run on the transformation threads"
                    );
                }
            } else {
                self.quick();
            }
            if !stopped {
                return result;
            }
        }
        let input = webhook.input(&headers).owned();
        let (done, result) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let job: Job = Box::new(move || {
            let counting = !this.slow.load(Ordering::Relaxed);
            let (started, clock) = (if counting { thread_cpu_nanos() } else { 0 }, Instant::now());
            let result = this.engine().and_then(|engine| this.run_json(engine, &input.input(), None));
            if counting && cpu_since(started, clock) <= INLINE_BUDGET {
                this.quick();
            }
            let _ = done.send(result);
        });
        if POOL.jobs.send(job).is_err() {
            return Err(Failure::Threw("the transformation threads are gone".into()));
        }
        result.await.unwrap_or_else(|_| Err(Failure::Threw("the transformation thread stopped".into())))
    }

    /// Whether [`INLINE_STRIKES`] calls in a row ran past [`INLINE_BUDGET`] (calls then go to
    /// the transformation threads).
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// A call took no more than [`INLINE_BUDGET`], wherever it ran: the count starts again.
    fn quick(&self) {
        if self.strikes.load(Ordering::Relaxed) != 0 {
            self.strikes.store(0, Ordering::Relaxed);
        }
    }

    fn idle_engine(&self) -> Option<Engine> {
        let engine = self.idle.lock().expect("engines").pop()?;
        IDLE_ENGINES.fetch_sub(1, Ordering::Relaxed);
        Some(engine)
    }

    /// An idle engine, or a new one.
    fn engine(&self) -> Result<Engine, Failure> {
        self.idle_engine().map_or_else(|| Engine::new(&self.source), Ok)
    }

    fn run_json(&self, engine: Engine, input: &Input<'_>, cpu: Option<(Duration, u64)>) -> Result<Outcome, Failure> {
        // An engine whose call failed may be in any state: it is dropped.
        let reply = engine.call(input, cpu)?;
        self.give_back(engine);
        match reply {
            Reply::Unchanged => Ok(Outcome::Unchanged),
            Reply::Text(output) => check(&output, input.payload).map(Outcome::Changed),
        }
    }

    /// Keeps `engine` for the next call: as many per transformation as there are cores (each
    /// runs one call at a time, on a runtime thread or a transformation thread), and
    /// [`MAX_IDLE_ENGINES`] over all of them.
    fn give_back(&self, engine: Engine) {
        let mut idle = self.idle.lock().expect("engines");
        if idle.len() < POOL.threads {
            if IDLE_ENGINES.fetch_add(1, Ordering::Relaxed) < MAX_IDLE_ENGINES {
                idle.push(engine);
            } else {
                IDLE_ENGINES.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The handler's answer (see [`WRAPPER`]) checked: `raw` is the payload it was given (JSON
/// already, so an unchanged payload is copied, not checked again).
fn check(output: &str, raw: &RawValue) -> Result<Transformed, Failure> {
    let invalid = || Failure::Invalid("handler must return the webhook object".into());
    let (unchanged, output) = match output.split_at_checked(1) {
        Some(("=", rest)) => (true, rest),
        Some(("~", rest)) => (false, rest),
        _ => return Err(invalid()),
    };
    let mut answer: Answer = serde_json::from_str(output).map_err(|_| invalid())?;
    if unchanged {
        answer.payload = Some(raw.to_owned());
    }
    let text = |field: &str, v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Ok(s),
        _ => Err(Failure::Invalid(format!("`{field}` must be a string"))),
    };
    let method = text("method", answer.method)?;
    if method != "POST" && method != "PUT" {
        return Err(Failure::Invalid(format!("`method` is {method:?}; it must be \"POST\" or \"PUT\"")));
    }
    let url = text("url", answer.url)?;
    let payload =
        answer.payload.filter(|p| p.get() != "null").ok_or_else(|| Failure::Invalid("`payload` is missing".into()))?;
    let headers = match answer.headers {
        None | Some(serde_json::Value::Null) => BTreeMap::new(),
        Some(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                other => Ok((k, other.to_string())),
            })
            .collect::<Result<_, Failure>>()?,
        Some(_) => return Err(Failure::Invalid("`headers` must be an object of strings".into())),
    };
    let cancel = match answer.cancel {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(_) => return Err(Failure::Invalid("`cancel` must be true or false".into())),
    };
    Ok(Transformed { method, url, payload, headers, cancel })
}

/// Runs `call` (a compile or a call: short, synchronous, bounded by [`TIME_LIMIT`]) on this
/// thread, telling a multi-threaded runtime so that its other tasks move elsewhere meanwhile.
pub fn in_place<T>(call: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        _ => call(),
    }
}

#[cfg(test)]
mod tests;
