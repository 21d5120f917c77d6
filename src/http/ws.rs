//! GraphQL over WebSocket: `graphql-transport-ws` (the graphql-ws library; Apollo's
//! `GraphQLWsLink`, urql, GraphiQL) and the legacy `graphql-ws` subprotocol
//! (subscriptions-transport-ws), implemented here rather than taken from async-graphql so that
//! close codes, the initialisation timeout, duplicate ids and keep-alives follow the protocols
//! (async-graphql closes with 1011/1002 where the spec says 4401/4400, replaces duplicate ids
//! silently, has no init timeout and never sends legacy `ka`).
//!
//! Each operation is validated and planned in its own task. Fast-path subscriptions (see
//! `schema::encode`) are then handed to the connection's writer task, which polls the readers
//! of all of them itself: a batch wakes one task per connection, not one per subscription plus
//! the writer, and every frame ready at that moment goes out with one flush. Everything else
//! (executor results, errors, control messages) reaches the writer through one bounded queue.
//! A slow socket stops the writer polling the readers, which then conflate instead of
//! queueing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_graphql::Data;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::stream::{BoxStream, SelectAll};
use futures::{SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::hub::{CursorError, Reader, Window};
use crate::limits::Limit;
use crate::schema::{BatchEncoder, Encoding, JsonEncoder, PlanSlot};
use crate::telemetry::SourceMetrics;

const MODERN: &str = "graphql-transport-ws";
const LEGACY: &str = "graphql-ws";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `graphql-transport-ws`.
    Modern,
    /// `graphql-ws` (subscriptions-transport-ws).
    Legacy,
}

/// The `connection_init` payload, available to resolvers as session data.
#[derive(Debug, Clone)]
pub struct ConnectionParams(pub serde_json::Value);

pub(super) fn upgrade(
    upgrade: WebSocketUpgrade,
    state: AppState,
    slot: Option<super::serve::ConnectionSlot>,
    upgrade_credentials: crate::auth::Credentials,
) -> Response {
    // Frames are limited like messages: otherwise a frame is read (up to 16 MiB) before
    // the message's size is checked.
    let upgrade = upgrade
        .protocols([MODERN, LEGACY])
        .max_message_size(state.ws.max_message_bytes)
        .max_frame_size(state.ws.max_message_bytes);
    let protocol = match upgrade.selected_protocol().and_then(|v| v.to_str().ok()) {
        Some(LEGACY) => Protocol::Legacy,
        // graphql-transport-ws is the default for clients that name no subprotocol.
        _ => Protocol::Modern,
    };
    upgrade.on_upgrade(move |socket| async move {
        run(socket, protocol, state, upgrade_credentials).await;
        drop(slot);
    })
}

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    payload: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct ServerMessage<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<T>,
}

fn text<T: Serialize>(kind: &'static str, id: Option<&str>, payload: Option<T>) -> Message {
    let json = serde_json::to_string(&ServerMessage { kind, id, payload })
        .unwrap_or_else(|_| r#"{"type":"error"}"#.to_owned());
    Message::Text(json.into())
}

fn close(code: u16, reason: &str) -> Message {
    // WebSocket close reasons are limited to 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

/// What operations hand the connection's writer, in order.
enum Out {
    Frame(Message),
    /// A fast-path subscription's frames: from now on the writer polls them itself.
    Frames(FrameStream),
}

/// A frame, and for a live change the hub's apply time and the source's metrics, to report
/// the delay once the frame is flushed.
struct Frame {
    message: Message,
    timing: Option<(Instant, Arc<SourceMetrics>)>,
}

type FrameStream = Pin<Box<dyn Stream<Item = Frame> + Send>>;

/// Frames the writer sends before it flushes, however many more are ready.
const MAX_BURST: usize = 256;

struct Operation {
    generation: u64,
    task: tokio::task::AbortHandle,
    /// Stops the operation's frames in the writer (a fast-path subscription outlives its task).
    cancel: CancellationToken,
}

impl Operation {
    fn stop(self) {
        self.task.abort();
        self.cancel.cancel();
    }
}

struct Connection {
    protocol: Protocol,
    state: AppState,
    out: mpsc::Sender<Out>,
    done_tx: mpsc::UnboundedSender<(String, u64)>,
    operations: HashMap<String, Operation>,
    generation: u64,
    init_received: bool,
    session: Arc<Data>,
    /// The schema the connection's session sees (set at `connection_init`).
    schema: Option<async_graphql::dynamic::Schema>,
    /// Who the connection is (set at `connection_init`).
    caller: Option<crate::auth::Session>,
    /// The credentials of the upgrade request (headers), for clients whose
    /// `connection_init` carries none.
    upgrade_credentials: crate::auth::Credentials,
    /// Set by `connection_init` when the session's credential expires, for the connection
    /// loop to arm its deadline (the connection closes then, 4403).
    arm_expiry: Option<Duration>,
}

/// What handling one client message asks the connection to do next.
enum Next {
    Continue,
    Close(u16, String),
}

async fn run(
    socket: WebSocket,
    protocol: Protocol,
    state: AppState,
    upgrade_credentials: crate::auth::Credentials,
) {
    state.metrics.connections.add(1);
    state.metrics.connections_total.inc();
    let (sink, mut stream) = socket.split();
    let (out, out_rx) = mpsc::channel::<Out>(64);
    let writer = tokio::spawn(write(sink, out_rx, state.ws.write_timeout));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut conn = Connection {
        protocol,
        state: state.clone(),
        out,
        done_tx,
        operations: HashMap::new(),
        generation: 0,
        init_received: false,
        session: Arc::new(Data::default()),
        schema: None,
        caller: None,
        upgrade_credentials,
        arm_expiry: None,
    };
    let init_deadline = tokio::time::sleep(state.ws.init_timeout);
    tokio::pin!(init_deadline);
    // Anything the client sends (a pong to the pings sent with each keep-alive included)
    // moves this on; a client silent for the idle timeout is gone or stuck.
    let idle_deadline = tokio::time::sleep(state.ws.idle_timeout);
    tokio::pin!(idle_deadline);
    // Armed at connection_init when the credential expires.
    let expiry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(expiry);
    let mut expiry_armed = false;
    let mut keepalive = tokio::time::interval(state.ws.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();

    let close_with = loop {
        tokio::select! {
            // Finished operations first, so a client reusing an id right after `complete`
            // is never taken for a duplicate.
            biased;
            Some((id, generation)) = done_rx.recv() => {
                if conn.operations.get(&id).is_some_and(|op| op.generation == generation) {
                    conn.operations.remove(&id);
                }
            }
            () = state.shutdown.cancelled() => break Some((1001, "server shutting down".to_owned())),
            () = &mut init_deadline, if !conn.init_received => {
                state.metrics.protocol_errors.inc();
                break Some((4408, "Connection initialisation timeout".to_owned()));
            }
            () = &mut expiry, if expiry_armed => {
                break Some((4403, "Forbidden: the credential has expired".to_owned()));
            }
            () = &mut idle_deadline => {
                state.metrics.limits.count(Limit::WsIdle);
                let seconds = state.ws.idle_timeout.as_secs_f64();
                break Some((4408, format!("Idle timeout: nothing received for {seconds} s")));
            }
            _ = keepalive.tick(), if conn.init_received => {
                if !conn.keep_alive().await {
                    break None;
                }
            }
            message = stream.next() => {
                idle_deadline.as_mut().reset(tokio::time::Instant::now() + state.ws.idle_timeout);
                let next = match message {
                    Some(Ok(Message::Text(body))) => {
                        let next = conn.handle(body.as_str()).await;
                        if let Some(left) = conn.arm_expiry.take() {
                            expiry.as_mut().reset(tokio::time::Instant::now() + left);
                            expiry_armed = true;
                        }
                        next
                    }
                    Some(Ok(Message::Binary(_))) => Next::Close(4400, "Binary messages are not supported".into()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Next::Continue,
                    // tungstenite's capacity error ("Message too long: …", "Frame too long"):
                    // the spec's 1009 (Message Too Big).
                    Some(Err(err)) if err.to_string().contains("too long") => {
                        state.metrics.limits.count(Limit::WsMessageBytes);
                        let max = state.ws.max_message_bytes;
                        break Some((1009, format!("Message too big: the limit is {max} bytes")));
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                };
                if let Next::Close(code, reason) = next {
                    if (4400..4500).contains(&code) {
                        state.metrics.protocol_errors.inc();
                    }
                    break Some((code, reason));
                }
            }
        }
    };
    for (_, op) in conn.operations.drain() {
        op.stop();
    }
    if let Some((code, reason)) = close_with {
        let _ = conn.out.send(Out::Frame(close(code, &reason))).await;
    }
    drop(conn);
    let _ = writer.await;
    state.metrics.connections.add(-1);
}

impl Connection {
    /// The protocol's keep-alive, and a WebSocket ping (every client answers it, whatever its
    /// protocol, which keeps an idle connection open); false once the writer is gone.
    async fn keep_alive(&self) -> bool {
        let message = match self.protocol {
            Protocol::Modern => text::<()>("ping", None, None),
            Protocol::Legacy => text::<()>("ka", None, None),
        };
        self.out.send(Out::Frame(message)).await.is_ok()
            && self
                .out
                .send(Out::Frame(Message::Ping(axum::body::Bytes::new())))
                .await
                .is_ok()
    }

    async fn handle(&mut self, body: &str) -> Next {
        let message: ClientMessage = match serde_json::from_str(body) {
            Ok(message) => message,
            Err(err) => {
                return match self.protocol {
                    Protocol::Modern => {
                        Next::Close(4400, format!("Invalid message received: {err}"))
                    }
                    Protocol::Legacy => {
                        self.send(text(
                            "connection_error",
                            None,
                            Some(
                                serde_json::json!({ "message": format!("invalid message: {err}") }),
                            ),
                        ))
                        .await;
                        Next::Continue
                    }
                };
            }
        };
        match self.protocol {
            Protocol::Modern => self.handle_modern(message).await,
            Protocol::Legacy => self.handle_legacy(message).await,
        }
    }

    async fn handle_modern(&mut self, message: ClientMessage) -> Next {
        match message.kind.as_str() {
            "connection_init" => {
                if self.init_received {
                    return Next::Close(4429, "Too many initialisation requests".into());
                }
                if let Err(err) = self.accept_init(message.payload).await {
                    return Next::Close(4403, format!("Forbidden: {err}"));
                }
                self.send(text::<()>("connection_ack", None, None)).await;
                Next::Continue
            }
            "ping" => {
                self.send(text("pong", None, message.payload)).await;
                Next::Continue
            }
            "pong" => Next::Continue,
            "subscribe" => {
                if !self.init_received {
                    return Next::Close(4401, "Unauthorized".into());
                }
                let Some(id) = message.id.filter(|id| !id.is_empty()) else {
                    return Next::Close(
                        4400,
                        "Invalid message received: subscribe needs an id".into(),
                    );
                };
                if self.operations.contains_key(&id) {
                    return Next::Close(4409, format!("Subscriber for {id} already exists"));
                }
                match parse_request(message.payload) {
                    Ok(request) => self.start(id, request).await,
                    Err(reason) => {
                        return Next::Close(4400, format!("Invalid message received: {reason}"));
                    }
                }
                Next::Continue
            }
            "complete" => {
                if let Some(op) = message.id.and_then(|id| self.operations.remove(&id)) {
                    op.stop();
                }
                Next::Continue
            }
            other => Next::Close(
                4400,
                format!("Invalid message received: unknown type {other:?}"),
            ),
        }
    }

    async fn handle_legacy(&mut self, message: ClientMessage) -> Next {
        match message.kind.as_str() {
            "connection_init" => {
                if !self.init_received
                    && let Err(err) = self.accept_init(message.payload).await
                {
                    // The legacy protocol's refusal: connection_error, then the close.
                    self.send(text(
                        "connection_error",
                        None,
                        Some(serde_json::json!({ "message": err.to_string(), "extensions": { "code": err.code() } })),
                    ))
                    .await;
                    return Next::Close(4403, format!("Forbidden: {err}"));
                }
                self.send(text::<()>("connection_ack", None, None)).await;
                self.send(text::<()>("ka", None, None)).await;
                Next::Continue
            }
            "start" => {
                let id = message.id.unwrap_or_default();
                if !self.init_received {
                    self.send_error(&id, "send connection_init before start")
                        .await;
                    return Next::Continue;
                }
                // subscriptions-transport-ws replaces an operation whose id is reused.
                if let Some(op) = self.operations.remove(&id) {
                    op.stop();
                }
                match parse_request(message.payload) {
                    Ok(request) => self.start(id, request).await,
                    Err(reason) => self.send_error(&id, &reason).await,
                }
                Next::Continue
            }
            "stop" => {
                // Only a running operation is completed: one that already ended sent its own
                // `complete` or `error`.
                if let Some((id, op)) = message
                    .id
                    .and_then(|id| self.operations.remove(&id).map(|op| (id, op)))
                {
                    op.stop();
                    self.send(text::<()>("complete", Some(&id), None)).await;
                }
                Next::Continue
            }
            "connection_terminate" => Next::Close(1000, "Normal Closure".into()),
            other => {
                let id = message.id.unwrap_or_default();
                self.send_error(&id, &format!("unknown message type {other:?}"))
                    .await;
                Next::Continue
            }
        }
    }

    /// Authenticates the connection with the credentials of `connection_init` (or, without
    /// any there, of the upgrade request) and sets its session and schema.
    async fn accept_init(
        &mut self,
        payload: Option<serde_json::Value>,
    ) -> Result<(), crate::auth::AuthError> {
        let payload = payload.unwrap_or(serde_json::Value::Null);
        let mut credentials = crate::auth::Credentials::from_init_payload(&payload);
        if credentials.is_empty() {
            credentials = crate::auth::Credentials {
                role: credentials
                    .role
                    .or_else(|| self.upgrade_credentials.role.clone()),
                ..self.upgrade_credentials.clone()
            };
        }
        let session = self.state.auth.authenticate(&credentials).await?;
        self.init_received = true;
        self.schema = Some(self.state.schemas.for_session(&session).clone());
        self.arm_expiry = session.remaining();
        let mut data = Data::default();
        data.insert(ConnectionParams(payload));
        data.insert(crate::limits::FilterBudget::new(self.state.ws.max_filters));
        data.insert(session.clone());
        self.caller = Some(session);
        self.session = Arc::new(data);
        Ok(())
    }

    async fn send(&self, message: Message) {
        let _ = self.out.send(Out::Frame(message)).await;
    }

    async fn send_error(&self, id: &str, message: &str) {
        let payload = serde_json::json!([{ "message": message }]);
        self.send(text("error", Some(id), Some(payload))).await;
    }

    /// Runs one operation in its own task.
    async fn start(&mut self, id: String, mut request: async_graphql::Request) {
        if self.operations.len() >= self.state.ws.max_operations {
            self.state.metrics.limits.count(Limit::WsOperations);
            let limit = self.state.ws.max_operations;
            self.send_error(
                &id,
                &format!(
                    "too many operations on this connection (limit {limit}); complete some first"
                ),
            )
            .await;
            return;
        }
        if let Err(refusal) = super::admit::admit(&self.state, &mut request) {
            let payload = serde_json::json!([refusal.error]);
            self.send(text("error", Some(&id), Some(payload))).await;
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        // Subscriptions without directives run on the fast path: the executor validates them
        // and records a plan instead of streaming (see schema::encode).
        let slot = PlanSlot::default();
        if !request.query.contains('@') {
            request = request.data(slot.clone());
        }
        let query = request.query.clone();
        let Some(schema) = &self.schema else {
            // Operations start only after connection_init set the schema.
            return;
        };
        // Queries and mutations run as one result (a role's schema may have no subscription
        // root to stream with); subscriptions stream.
        let subscribes = super::admit::has_operation(
            &mut request,
            async_graphql::parser::types::OperationType::Subscription,
        );
        let responses = if subscribes {
            schema.execute_stream_with_session_data(request, self.session.clone())
        } else {
            let schema = schema.clone();
            let request = match &self.caller {
                Some(session) => request.data(session.clone()),
                None => request,
            };
            futures::stream::once(async move { schema.execute(request).await }).boxed()
        };
        let op = OperationContext {
            id: id.clone(),
            query,
            generation,
            data_kind: if self.protocol == Protocol::Modern {
                "next"
            } else {
                "data"
            },
            out: self.out.clone(),
            done: self.done_tx.clone(),
            cancel: CancellationToken::new(),
            metrics: self.state.metrics.clone(),
        };
        let cancel = op.cancel.clone();
        let task = tokio::spawn(async move {
            match run_operation(&op, responses, &slot).await {
                Ended::Complete => {
                    let _ = op.out.send(Out::Frame(op.message("complete"))).await;
                    op.finished();
                }
                Ended::Errored => op.finished(),
                // The writer reports the end.
                Ended::HandedOver => {}
            }
        });
        self.operations.insert(
            id,
            Operation {
                generation,
                task: task.abort_handle(),
                cancel,
            },
        );
    }
}

/// The connection's writer: frames queued by the connection and its operations, and the frames
/// of fast-path subscriptions, whose readers it polls itself. Whatever is ready goes out with
/// one flush. A client that stops reading for `write_timeout` is dropped: its socket would
/// otherwise hold this connection's tasks for as long as TCP keeps it open.
async fn write(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut out_rx: mpsc::Receiver<Out>,
    write_timeout: Duration,
) {
    let mut subscriptions: SelectAll<FrameStream> = SelectAll::new();
    let mut timings: Vec<(Instant, Arc<SourceMetrics>)> = Vec::new();
    'write: loop {
        let mut frame = tokio::select! {
            biased;
            out = out_rx.recv() => match out {
                Some(Out::Frame(message)) => Frame { message, timing: None },
                Some(Out::Frames(frames)) => {
                    subscriptions.push(frames);
                    continue;
                }
                None => break,
            },
            Some(frame) = subscriptions.next(), if !subscriptions.is_empty() => frame,
        };
        let mut fed = 0;
        loop {
            let closing = matches!(frame.message, Message::Close(_));
            timings.extend(frame.timing);
            let result = tokio::time::timeout(write_timeout, sink.feed(frame.message)).await;
            if !matches!(result, Ok(Ok(()))) || closing {
                break 'write;
            }
            fed += 1;
            if fed == MAX_BURST {
                break;
            }
            match ready_frame(&mut out_rx, &mut subscriptions).await {
                Some(next) => frame = next,
                None => break,
            }
        }
        if !matches!(
            tokio::time::timeout(write_timeout, sink.flush()).await,
            Ok(Ok(()))
        ) {
            break;
        }
        let flushed = Instant::now();
        for (applied, metrics) in timings.drain(..) {
            metrics
                .delivery_delay
                .observe(flushed.saturating_duration_since(applied));
        }
    }
    // Stop reading the subscriptions (their views stop working for us) and refuse further
    // frames before closing; a peer that stopped reading cannot hold the close either.
    drop(subscriptions);
    out_rx.close();
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
}

/// A frame that is ready now (queued, or from a subscription's reader), without waiting.
async fn ready_frame(
    out_rx: &mut mpsc::Receiver<Out>,
    subscriptions: &mut SelectAll<FrameStream>,
) -> Option<Frame> {
    loop {
        match out_rx.try_recv() {
            Ok(Out::Frame(message)) => {
                return Some(Frame {
                    message,
                    timing: None,
                });
            }
            Ok(Out::Frames(frames)) => subscriptions.push(frames),
            Err(_) => break,
        }
    }
    std::future::poll_fn(|cx| match subscriptions.poll_next_unpin(cx) {
        Poll::Ready(Some(frame)) => Poll::Ready(Some(frame)),
        Poll::Ready(None) | Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// One operation as its task sees it.
struct OperationContext {
    id: String,
    /// The document (to tell a parse error from a validation error).
    query: String,
    generation: u64,
    data_kind: &'static str,
    out: mpsc::Sender<Out>,
    done: mpsc::UnboundedSender<(String, u64)>,
    cancel: CancellationToken,
    metrics: Arc<crate::telemetry::Metrics>,
}

impl OperationContext {
    fn message(&self, kind: &'static str) -> Message {
        text::<()>(kind, Some(&self.id), None)
    }

    /// Tells the connection the operation ended, so its id may be reused.
    fn finished(&self) {
        let _ = self.done.send((self.id.clone(), self.generation));
    }
}

/// How an operation's task ended.
enum Ended {
    /// Its results are sent; `complete` follows.
    Complete,
    /// It ended with an `error` message, or the connection is gone: no `complete`.
    Errored,
    /// A fast-path subscription: the writer now sends its frames and reports its end.
    HandedOver,
}

/// Sends an operation's results, or hands a planned subscription's reader to the writer.
async fn run_operation(
    op: &OperationContext,
    mut responses: BoxStream<'static, async_graphql::Response>,
    slot: &PlanSlot,
) -> Ended {
    let id = op.id.as_str();
    let mut first = true;
    while let Some(response) = responses.next().await {
        // Errors before any result (parse, validation, a rejected argument) end the operation
        // with an `error` message, as both protocols specify.
        if first && response.is_err() && response.data == async_graphql::Value::Null {
            let mut errors = response.errors;
            super::coded(&mut errors, &op.query);
            let _ = op
                .out
                .send(Out::Frame(text("error", Some(id), Some(&errors))))
                .await;
            return Ended::Errored;
        }
        first = false;
        let message = text(op.data_kind, Some(id), Some(&response));
        if op.out.send(Out::Frame(message)).await.is_err() {
            return Ended::Errored;
        }
    }
    drop(responses);
    let Some(plan) = slot.take() else {
        return Ended::Complete;
    };
    let root = plan.hub.source().name.clone();
    let metrics = plan.hub.metrics().clone();
    let ticket = plan.ticket;
    let opened = match plan.encoding {
        Encoding::Updates(encoder) => Reader::open_encoded(
            plan.hub,
            plan.filter,
            encoder,
            plan.after,
            plan.snapshot_end,
        )
        .await
        .map(Step::Read),
        Encoding::Batches(encoder, window) => Reader::open_encoded(
            plan.hub,
            plan.filter,
            encoder,
            plan.after,
            plan.snapshot_end,
        )
        .await
        .map(|reader| Step::ReadBatches(reader, window)),
    };
    let step = match opened {
        Ok(step) => step,
        Err(err) => {
            if err.is_view_limit() {
                op.metrics.limits.count(Limit::Views);
            }
            let errors = serde_json::json!([{ "message": err.to_string(), "path": [root], "extensions": { "code": err.code() } }]);
            let _ = op
                .out
                .send(Out::Frame(text("error", Some(id), Some(errors))))
                .await;
            return Ended::Errored;
        }
    };
    let frames = subscription_frames(op, step, root, metrics, ticket);
    if op.out.send(Out::Frames(frames)).await.is_err() {
        return Ended::Errored;
    }
    Ended::HandedOver
}

/// What a fast-path subscription's frame stream does next.
enum Step {
    Read(Reader<JsonEncoder>),
    /// A batched subscription: one frame per window.
    ReadBatches(Reader<BatchEncoder>, Window),
    /// The reader ended with an error (already sent): send `complete`.
    Complete,
    Done,
}

/// A fast-path subscription as its frame stream carries it from frame to frame.
struct Subscription {
    step: Step,
    /// `{"id":…,"type":"next","payload":` — each frame is this, an encoded item and `}`.
    prefix: String,
    id: String,
    generation: u64,
    data_kind: &'static str,
    root: String,
    metrics: Arc<SourceMetrics>,
    done: mpsc::UnboundedSender<(String, u64)>,
    /// The connection's use of this subscription's filter, given back with the subscription.
    _ticket: Option<crate::limits::FilterTicket>,
}

impl Subscription {
    /// A result in the protocol's envelope.
    fn frame(&self, body: &str, applied: Option<std::time::Instant>) -> Frame {
        let mut message = String::with_capacity(self.prefix.len() + body.len() + 1);
        message.push_str(&self.prefix);
        message.push_str(body);
        message.push('}');
        Frame {
            message: Message::Text(message.into()),
            timing: applied.map(|at| (at, self.metrics.clone())),
        }
    }

    async fn next_frame(mut self) -> Option<(Frame, Subscription)> {
        let frame = match std::mem::replace(&mut self.step, Step::Done) {
            Step::Read(mut reader) => match reader.next_timed().await {
                Ok((body, applied)) => {
                    self.step = Step::Read(reader);
                    self.frame(&body, applied)
                }
                Err(err) => {
                    self.step = Step::Complete;
                    ended_frame(&self.id, self.data_kind, &self.root, &err)
                }
            },
            Step::ReadBatches(mut reader, window) => {
                match reader.next_window(window).await {
                    Ok(items) => {
                        // A window's delay is that of its oldest change.
                        let applied = items.iter().filter_map(|(_, at)| *at).min();
                        let body = reader.encoder().payload(items.iter().map(|(item, _)| item));
                        self.step = Step::ReadBatches(reader, window);
                        self.frame(&body, applied)
                    }
                    Err(err) => {
                        self.step = Step::Complete;
                        ended_frame(&self.id, self.data_kind, &self.root, &err)
                    }
                }
            }
            Step::Complete => {
                let _ = self.done.send((self.id.clone(), self.generation));
                Frame {
                    message: text::<()>("complete", Some(&self.id), None),
                    timing: None,
                }
            }
            Step::Done => return None,
        };
        Some((frame, self))
    }
}

/// A fast-path subscription's frames, as the writer polls them: each encoded item wrapped in
/// the protocol's envelope; when the reader ends, the error and `complete`; nothing more once
/// the operation is cancelled. The connection hears of the end before the last frame goes out,
/// so a client reusing the id after `complete` is never taken for a duplicate.
fn subscription_frames(
    op: &OperationContext,
    step: Step,
    root: String,
    metrics: Arc<SourceMetrics>,
    ticket: Option<crate::limits::FilterTicket>,
) -> FrameStream {
    let subscription = Subscription {
        step,
        prefix: format!(
            "{{\"id\":{},\"type\":\"{}\",\"payload\":",
            serde_json::to_string(&op.id).unwrap_or_default(),
            op.data_kind
        ),
        id: op.id.clone(),
        generation: op.generation,
        data_kind: op.data_kind,
        root,
        metrics,
        done: op.done.clone(),
        _ticket: ticket,
    };
    let frames = futures::stream::unfold(subscription, Subscription::next_frame);
    Box::pin(frames.take_until(op.cancel.clone().cancelled_owned()))
}

/// The result that tells a client its subscription ended (e.g. it fell behind the history).
fn ended_frame(id: &str, data_kind: &'static str, root: &str, err: &CursorError) -> Frame {
    let payload = serde_json::json!({
        "data": null,
        "errors": [{ "message": err.to_string(), "path": [root], "extensions": { "code": "SUBSCRIPTION_ENDED" } }],
    });
    Frame {
        message: text(data_kind, Some(id), Some(payload)),
        timing: None,
    }
}

fn parse_request(payload: Option<serde_json::Value>) -> Result<async_graphql::Request, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload {
        query: String,
        operation_name: Option<String>,
        variables: Option<serde_json::Value>,
        extensions: Option<serde_json::Map<String, serde_json::Value>>,
    }
    let payload: Payload = serde_json::from_value(payload.ok_or("missing payload")?)
        .map_err(|e| format!("bad payload: {e}"))?;
    let mut request = async_graphql::Request::new(payload.query);
    if let Some(name) = payload.operation_name {
        request = request.operation_name(name);
    }
    if let Some(variables) = payload.variables.filter(|v| !v.is_null()) {
        request = request.variables(async_graphql::Variables::from_json(variables));
    }
    if let Some(extensions) = payload.extensions {
        for (key, value) in extensions {
            if let Ok(value) = async_graphql::Value::from_json(value) {
                request.extensions.insert(key, value);
            }
        }
    }
    Ok(request)
}
