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
#[derive(Debug, Clone, Serialize)]
pub struct Webhook<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// The webhook body as JSON: handed to the engine as text beside the rest, and parsed
    /// there only if the handler reads or replaces it.
    #[serde(skip)]
    pub payload: &'a serde_json::value::RawValue,
    #[serde(rename = "eventType")]
    pub event_type: &'a str,
    pub headers: &'a BTreeMap<String, String>,
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

/// Wraps the handler: JSON in, JSON out, so nothing but plain data crosses the boundary. The
/// payload comes as its own text and `webhook.payload` parses it when first read: a handler
/// that only changes the URL or headers, or cancels, or returns the webhook as it came, costs
/// no parse and no `JSON.stringify` of the payload, and the payload is then sent exactly as it
/// came (the answer starts with `=`; `~` when the payload was read or replaced, followed by
/// the whole webhook).
const WRAPPER: &str = r#"
;if (typeof handler !== "function") { throw new Error("the script must define a function named handler"); }
globalThis.__heraldRun = function (input, raw) {
  const webhook = JSON.parse(input);
  let payload, parsed = false;
  const get = function () { if (!parsed) { payload = JSON.parse(raw); parsed = true; } return payload; };
  const set = function (value) { payload = value; parsed = true; };
  Object.defineProperty(webhook, "payload", { get, set, enumerable: true, configurable: true });
  const out = handler(webhook);
  const result = out === undefined ? webhook : out;
  const held = Object.getOwnPropertyDescriptor(webhook, "payload");
  if (result === webhook && !parsed && held !== undefined && held.get === get) {
    delete webhook.payload;
    return "=" + JSON.stringify(webhook);
  }
  return "~" + JSON.stringify(result);
};
"#;

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

    /// Runs `call` with [`TIME_LIMIT`] armed, and a limit of this thread's CPU time if `cpu`
    /// (from `cpu_started`, this thread's CPU time when the call began); classifies what it threw.
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

    fn call(&self, input: &str, raw: &str, cpu: Option<(Duration, u64)>) -> Result<String, Failure> {
        let mut output = String::new();
        self.timed(cpu, || {
            self.context.with(|ctx| {
                let run: Function = ctx.globals().get("__heraldRun").catch(&ctx).map_err(|e| e.to_string())?;
                output = run.call::<_, String>((input, raw)).catch(&ctx).map_err(|e| e.to_string())?;
                Ok(())
            })
        })?;
        Ok(output)
    }
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

    /// Runs the handler on `webhook`, on this thread.
    pub fn run(&self, webhook: &Webhook<'_>) -> Result<Transformed, Failure> {
        let input = serde_json::to_string(webhook).map_err(|e| Failure::Invalid(e.to_string()))?;
        let engine = self.engine()?;
        self.run_json(engine, &input, webhook.payload, None)
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
    pub async fn run_async(self: &Arc<Self>, webhook: &Webhook<'_>) -> Result<Transformed, Failure> {
        let input = serde_json::to_string(webhook).map_err(|e| Failure::Invalid(e.to_string()))?;
        let raw = webhook.payload;
        if !self.slow.load(Ordering::Relaxed)
            && let Some(engine) = self.idle_engine()
        {
            let started = thread_cpu_nanos();
            let result = self.run_json(engine, &input, raw, Some((INLINE_BUDGET, started)));
            let stopped = matches!(result, Err(Failure::TimedOut));
            let used = Duration::from_nanos(thread_cpu_nanos().saturating_sub(started));
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
        let raw: Box<RawValue> = raw.to_owned();
        let (done, result) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let job: Job = Box::new(move || {
            let counting = !this.slow.load(Ordering::Relaxed);
            let started = if counting { thread_cpu_nanos() } else { 0 };
            let result = this.engine().and_then(|engine| this.run_json(engine, &input, &raw, None));
            if counting && Duration::from_nanos(thread_cpu_nanos().saturating_sub(started)) <= INLINE_BUDGET {
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

    fn run_json(
        &self,
        engine: Engine,
        input: &str,
        raw: &RawValue,
        cpu: Option<(Duration, u64)>,
    ) -> Result<Transformed, Failure> {
        // An engine whose call failed may be in any state: it is dropped.
        let output = engine.call(input, raw.get(), cpu)?;
        self.give_back(engine);
        check(&output, raw)
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
mod tests {
    use super::*;

    fn json(out: &Transformed) -> serde_json::Value {
        serde_json::from_str(out.payload.get()).unwrap()
    }

    #[test]
    fn an_unchanged_payload_is_sent_as_it_came() {
        let body = r#"{"id":"evt_1","type":"order.paid","timestamp":"2026-01-01T00:00:00Z","tenant":"t","data":{"b":1,"a":2}}"#;
        let out = run("function handler(w) { return w; }", body).unwrap();
        assert_eq!(out.payload.get(), body, "keys keep their order");
        // Not read: sent as it came, spacing and all, whatever else changed.
        let spaced = r#"{ "b": 1,  "a": [1, 2] }"#;
        let out =
            run("function handler(w) { w.url = 'https://x.example/'; w.headers = {'x-a': 'b'}; }", spaced).unwrap();
        assert_eq!(
            (out.payload.get(), out.url.as_str(), out.headers["x-a"].as_str()),
            (spaced, "https://x.example/", "b")
        );
        // Read, or replaced, or the webhook rebuilt: what the handler made of it.
        let read = run("function handler(w) { w.payload.c = w.payload.b + 1; return w; }", spaced).unwrap();
        assert_eq!(json(&read), serde_json::json!({"b": 1, "a": [1, 2], "c": 2}));
        let replaced = run("function handler(w) { w.payload = {x: 1}; }", spaced).unwrap();
        assert_eq!(json(&replaced), serde_json::json!({"x": 1}));
        let rebuilt = run("function handler(w) { return {...w, url: 'https://y.example/'}; }", spaced).unwrap();
        assert_eq!(
            (json(&rebuilt), rebuilt.url.as_str()),
            (serde_json::json!({"b": 1, "a": [1, 2]}), "https://y.example/")
        );
        let logged = run("function handler(w) { JSON.stringify(w); return w; }", spaced).unwrap();
        assert_eq!(json(&logged), serde_json::json!({"b": 1, "a": [1, 2]}));
        // Taken away, or given another property in its place: missing, or what was put there.
        assert_eq!(
            run("function handler(w) { delete w.payload; return w; }", spaced).unwrap_err(),
            Failure::Invalid("`payload` is missing".into())
        );
        let redefined =
            run("function handler(w) { Object.defineProperty(w, 'payload', {value: [3], enumerable: true}); }", spaced)
                .unwrap();
        assert_eq!(json(&redefined), serde_json::json!([3]));
    }

    fn run(source: &str, payload: &str) -> Result<Transformed, Failure> {
        let raw = serde_json::value::RawValue::from_string(payload.to_owned()).unwrap();
        let headers = BTreeMap::new();
        let webhook = Webhook {
            method: "POST",
            url: "https://example.com/hook",
            payload: &raw,
            event_type: "order.paid",
            headers: &headers,
        };
        Transformation::compile(source)?.run(&webhook)
    }

    #[test]
    fn svix_examples_run_unchanged() {
        // Svix's documented example: send to a URL the payload names, if it names one.
        let redirect = r#"function handler(webhook) {
  if (webhook.payload.customUrl) {
    webhook.url = webhook.payload.customUrl;
  }
  return webhook;
}"#;
        let out = run(redirect, r#"{"customUrl": "https://other.example/in", "x": 1}"#).unwrap();
        assert_eq!(out.url, "https://other.example/in");
        assert_eq!(json(&out)["x"], 1);
        let out = run(redirect, r#"{"x": 1}"#).unwrap();
        assert_eq!(out.url, "https://example.com/hook");

        let reshape = r#"function handler(webhook) {
  webhook.method = "PUT";
  webhook.payload = { text: `${webhook.eventType}: ${webhook.payload.data.total}` };
  webhook.headers = { "x-shape": "slack" };
  return webhook;
}"#;
        let out = run(reshape, r#"{"data": {"total": 42}}"#).unwrap();
        assert_eq!(out.method, "PUT");
        assert_eq!(json(&out), serde_json::json!({"text": "order.paid: 42"}));
        assert_eq!(out.headers["x-shape"], "slack");

        let cancel = "function handler(webhook) { webhook.cancel = webhook.payload.test === true; return webhook; }";
        assert!(run(cancel, r#"{"test": true}"#).unwrap().cancel);
        assert!(!run(cancel, r#"{"test": false}"#).unwrap().cancel);
    }

    #[test]
    fn runaway_scripts_fail_their_call_with_a_class_and_the_engine_recovers() {
        assert_eq!(run("function handler(w) { for (;;) {} }", "{}").unwrap_err(), Failure::TimedOut);
        assert_eq!(
            run("function handler(w) { const a = []; for (;;) { a.push(new Array(1000000).fill(1)); } }", "{}")
                .unwrap_err(),
            Failure::OutOfMemory
        );
        assert_eq!(run("function handler(w) { return handler(w); }", "{}").unwrap_err(), Failure::OutOfMemory);
        let threw = run("function handler(w) { throw new Error('no thanks'); }", "{}").unwrap_err();
        assert!(matches!(&threw, Failure::Threw(m) if m.contains("no thanks")), "{threw:?}");
        assert!(matches!(run("function handler(w) {", "{}"), Err(Failure::Syntax(_))));
        assert!(matches!(run("var x = 1;", "{}"), Err(Failure::Syntax(m)) if m.contains("handler")));
        assert!(matches!(run("function handler(w) { return 5; }", "{}"), Err(Failure::Invalid(_))));
        assert!(
            matches!(run("function handler(w) { w.method = 'GET'; return w; }", "{}"), Err(Failure::Invalid(m)) if m.contains("POST"))
        );

        // A transformation keeps working after one of its calls timed out.
        let t =
            Transformation::compile("function handler(w) { if (w.payload.spin) { for (;;) {} } return w; }").unwrap();
        let headers = BTreeMap::new();
        let call = |payload: &str| {
            let raw = serde_json::value::RawValue::from_string(payload.to_owned()).unwrap();
            t.run(&Webhook { method: "POST", url: "u", payload: &raw, event_type: "t", headers: &headers })
        };
        assert_eq!(call(r#"{"spin": true}"#).unwrap_err(), Failure::TimedOut);
        assert!(call(r#"{"spin": false}"#).is_ok());
    }

    #[test]
    fn quick_calls_run_where_they_are_asked_and_slow_ones_move_their_transformation_to_the_threads() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let t = Arc::new(
            Transformation::compile(
                "function handler(w) {
                   if (w.payload.spin) { for (;;) {} }
                   let x = 0;
                   for (let i = 0; i < w.payload.work; i++) { x += i; }
                   w.payload.seen = x >= 0;
                   return w;
                 }",
            )
            .unwrap(),
        );
        let headers = BTreeMap::new();
        let call = |payload: &str| {
            let raw = serde_json::value::RawValue::from_string(payload.to_owned()).unwrap();
            let started = Instant::now();
            let result = runtime.block_on(t.run_async(&Webhook {
                method: "POST",
                url: "u",
                payload: &raw,
                event_type: "t",
                headers: &headers,
            }));
            (result, started.elapsed())
        };
        let (quick, slow) = (r#"{"work": 1}"#, r#"{"work": 100000}"#);
        for _ in 0..20 {
            assert_eq!(json(&call(quick).0.unwrap())["seen"], true);
            assert!(!t.is_slow(), "a quick script stays on the calling thread");
        }
        // A runaway call is stopped at the budget, made again on a transformation thread with
        // the whole time limit, and fails with its class there.
        let (out, took) = call(r#"{"spin": true}"#);
        assert_eq!(out.unwrap_err(), Failure::TimedOut);
        assert!(took >= INLINE_BUDGET + TIME_LIMIT, "{took:?}: the whole limit, after the budget");
        assert!(call(quick).0.is_ok());
        // A call past the budget is stopped and made again on a transformation thread, where it
        // completes. A quick call between two slow ones starts the count again; so many in a
        // row move the transformation for good.
        for _ in 1..INLINE_STRIKES {
            assert_eq!(json(&call(slow).0.unwrap())["seen"], true);
        }
        assert!(call(quick).0.is_ok());
        for in_a_row in 1..INLINE_STRIKES {
            assert_eq!(json(&call(slow).0.unwrap())["seen"], true);
            assert!(!t.is_slow(), "{in_a_row} in a row");
        }
        assert_eq!(json(&call(slow).0.unwrap())["seen"], true);
        assert!(t.is_slow(), "{INLINE_STRIKES} in a row");
        // Later calls run on the transformation threads, and still work.
        assert_eq!(json(&call(quick).0.unwrap())["seen"], true);
    }
}
