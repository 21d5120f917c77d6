//! One client connection: start-up, the simple and extended query protocols, transactions,
//! statement execution, COPY streaming of SUBSCRIBE and cursors.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cursor::{MzCursor, RwCursor, Start};
use crate::eval::{Scope, column_val, eval, holds};
use crate::sql::{self, Expr, Name, Since, Statement};
use crate::store::{Changes, Column, Row, RwSubscription, table_key};
use crate::subscribe::{OutRow, Subscription, copy_text};
use crate::types::SqlType;
use crate::wire::{self, Frontend, Out, Startup};
use crate::{Chunking, ConnInfo, Error, Shared, errors};

/// A table as one session sees it: its key, columns, primary key and rows.
type Visible = (String, Vec<Column>, Vec<usize>, HashMap<Row, i64>);

/// What a statement produced.
enum Outcome {
    Tag(String),
    Rows {
        columns: Vec<(String, SqlType)>,
        rows: Vec<OutRow>,
        tag: String,
    },
    Copy(Box<Subscription>),
}

struct Prepared {
    statement: Statement,
    param_types: Vec<SqlType>,
}

struct Portal {
    statement: Statement,
    params: Vec<Option<String>>,
    result_formats: Vec<i16>,
}

/// Why a connection stops.
enum Stop {
    /// The client went away, or a test killed the connection.
    Closed,
}

struct Session {
    shared: Arc<Shared>,
    out: Out,
    wr: Box<dyn AsyncWrite + Send + Unpin>,
    rx: mpsc::Receiver<Frontend>,
    kill: CancellationToken,
    cancel: Arc<std::sync::Mutex<CancellationToken>>,
    streaming: Arc<AtomicBool>,
    schema: String,
    cluster: String,
    database: String,
    in_transaction: bool,
    failed: bool,
    writes: Vec<(String, Changes)>,
    prepared: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    mz_cursors: HashMap<String, MzCursor>,
    rw_cursors: HashMap<String, RwCursor>,
    /// Extended protocol: after an error, messages are skipped until Sync.
    skip_to_sync: bool,
    /// Messages that arrived while COPY was streaming, handled after it.
    deferred: std::collections::VecDeque<Frontend>,
}

// Start-up reads top to bottom as the protocol runs; split, it would hide the order.
#[allow(clippy::too_many_lines)]
pub async fn serve(mut socket: TcpStream, shared: Arc<Shared>, stop: CancellationToken) {
    // An SSLRequest comes first, if at all: answered `S` (and the session continues over TLS)
    // when the stand-in has a certificate, else `N`.
    // Plain TCP splits without a lock; a TLS session needs tokio's shared split.
    type Halves = (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    );
    let mut first = wire::read_startup(&mut socket).await;
    let (mut rd, wr): Halves = match (&first, &shared.options.tls) {
        (Ok(Startup::Ssl), Some(tls)) => {
            if socket.write_all(b"S").await.is_err() {
                return;
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            let Ok(mut tls) = acceptor.accept(socket).await else {
                return;
            };
            shared.tls_sessions.fetch_add(1, Ordering::Relaxed);
            first = wire::read_startup(&mut tls).await;
            let (rd, wr) = tokio::io::split(tls);
            (Box::new(rd), Box::new(wr))
        }
        (Ok(Startup::Ssl), None) => {
            if socket.write_all(b"N").await.is_err() {
                return;
            }
            first = wire::read_startup(&mut socket).await;
            let (rd, wr) = socket.into_split();
            (Box::new(rd), Box::new(wr))
        }
        _ => {
            let (rd, wr) = socket.into_split();
            (Box::new(rd), Box::new(wr))
        }
    };
    let startup = match first {
        Ok(Startup::Ssl) | Err(_) => return,
        Ok(other) => other,
    };
    let params = match startup {
        Startup::Cancel { pid, secret } => {
            let conns = shared
                .conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(info) = conns.get(&pid)
                && info.secret == secret
            {
                info.cancel
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .cancel();
            }
            return;
        }
        Startup::Session { params } => params,
        Startup::Ssl => return,
    };
    let pid = shared.next_pid.fetch_add(1, Ordering::Relaxed);
    let secret: i32 = rand::rng().random();
    let kill = stop.child_token();
    let cancel = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
    let streaming = Arc::new(AtomicBool::new(false));
    shared
        .conns
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            pid,
            ConnInfo {
                secret,
                kill: kill.clone(),
                cancel: cancel.clone(),
                streaming: streaming.clone(),
            },
        );
    let (tx, rx) = mpsc::channel(64);
    let reader = tokio::spawn(async move {
        while let Ok(message) = wire::read_message(&mut rd).await {
            let terminate = matches!(message, Frontend::Terminate);
            if tx.send(message).await.is_err() || terminate {
                break;
            }
        }
    });
    let database = params
        .iter()
        .find(|(k, _)| k == "database")
        .map_or("materialize", |(_, v)| v.as_str())
        .to_owned();
    let mut session = Session {
        shared: shared.clone(),
        out: Out::default(),
        wr,
        rx,
        kill: kill.clone(),
        cancel,
        streaming,
        schema: "public".into(),
        cluster: "quickstart".into(),
        database: database.clone(),
        in_transaction: false,
        failed: false,
        writes: Vec::new(),
        prepared: HashMap::new(),
        portals: HashMap::new(),
        mz_cursors: HashMap::new(),
        rw_cursors: HashMap::new(),
        skip_to_sync: false,
        deferred: std::collections::VecDeque::new(),
    };
    session.out.auth_ok();
    for (key, value) in [
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("server_version", "9.5.0"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("IntervalStyle", "postgres"),
        ("database", &database),
        ("mz_version", "v0.0.0-standin (test double)"),
    ] {
        session.out.parameter_status(key, value);
    }
    session.out.backend_key(pid, secret);
    session.out.ready(b'I');
    if session.flush().await.is_ok() {
        let _ = session.run().await;
    }
    reader.abort();
    shared
        .conns
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&pid);
}

impl Session {
    async fn flush(&mut self) -> Result<(), Stop> {
        self.out.flush(&mut self.wr).await.map_err(|_| Stop::Closed)
    }

    fn status(&self) -> u8 {
        match (self.in_transaction, self.failed) {
            (false, _) => b'I',
            (true, false) => b'T',
            (true, true) => b'E',
        }
    }

    async fn run(&mut self) -> Result<(), Stop> {
        loop {
            let message = if let Some(message) = self.deferred.pop_front() {
                message
            } else {
                tokio::select! {
                    () = self.kill.cancelled() => return Err(Stop::Closed),
                    message = self.rx.recv() => message.ok_or(Stop::Closed)?,
                }
            };
            if self.skip_to_sync && !matches!(message, Frontend::Sync) {
                continue;
            }
            match message {
                Frontend::Query(text) => self.simple_query(&text).await?,
                Frontend::Parse { name, sql, types } => self.parse(name, &sql, &types),
                Frontend::Bind {
                    portal,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                } => self.bind(portal, &statement, &param_formats, params, result_formats),
                Frontend::Describe { kind, name } => self.describe(kind, &name),
                Frontend::Execute { portal } => self.execute_portal(&portal).await?,
                Frontend::Close { kind, name } => {
                    if kind == b'S' {
                        self.prepared.remove(&name);
                    } else {
                        self.portals.remove(&name);
                    }
                    self.out.close_complete();
                }
                Frontend::Sync => {
                    self.skip_to_sync = false;
                    let status = self.status();
                    self.out.ready(status);
                    self.flush().await?;
                }
                Frontend::Flush => self.flush().await?,
                Frontend::Terminate => return Ok(()),
                Frontend::Other => {}
            }
        }
    }

    fn error(&mut self, err: &Error) {
        self.out.error(err.code, &err.message);
        if self.in_transaction {
            self.failed = true;
        }
    }

    async fn simple_query(&mut self, text: &str) -> Result<(), Stop> {
        match sql::parse(text) {
            Err(message) => self.error(&errors::syntax(message)),
            Ok(statements) => {
                for statement in statements {
                    if statement == Statement::Empty {
                        self.out.empty_query();
                        continue;
                    }
                    match self.execute(statement, Vec::new()).await? {
                        Ok(Outcome::Tag(tag)) => self.out.command_complete(&tag),
                        Ok(Outcome::Rows { columns, rows, tag }) => {
                            self.out.row_description(&columns, &[]);
                            for row in &rows {
                                let values: Vec<Option<Vec<u8>>> = row
                                    .iter()
                                    .map(|v| v.as_ref().map(|s| s.as_bytes().to_vec()))
                                    .collect();
                                self.out.data_row(&values);
                            }
                            self.out.command_complete(&tag);
                        }
                        Ok(Outcome::Copy(subscription)) => self.stream_copy(*subscription).await?,
                        Err(err) => {
                            self.error(&err);
                            break;
                        }
                    }
                }
            }
        }
        let status = self.status();
        self.out.ready(status);
        self.flush().await
    }

    fn parse(&mut self, name: String, text: &str, types: &[u32]) {
        let parsed = sql::parse(text).and_then(|mut statements| {
            if statements.len() > 1 {
                return Err("cannot insert multiple commands into a prepared statement".into());
            }
            Ok(statements.remove(0))
        });
        match parsed {
            Ok(statement) => {
                let mut param_types = infer_params(&statement, self);
                for (i, &oid) in types.iter().enumerate() {
                    if let Some(ty) = type_of_oid(oid)
                        && let Some(slot) = param_types.get_mut(i)
                    {
                        *slot = ty;
                    }
                }
                self.prepared.insert(
                    name,
                    Prepared {
                        statement,
                        param_types,
                    },
                );
                self.out.parse_complete();
            }
            Err(message) => {
                self.error(&errors::syntax(message));
                self.skip_to_sync = true;
            }
        }
    }

    fn bind(
        &mut self,
        portal: String,
        statement: &str,
        formats: &[i16],
        params: Vec<Option<bytes::Bytes>>,
        result_formats: Vec<i16>,
    ) {
        let Some(prepared) = self.prepared.get(statement) else {
            self.error(&Error {
                code: "26000",
                message: format!("prepared statement \"{statement}\" does not exist"),
            });
            self.skip_to_sync = true;
            return;
        };
        let mut values = Vec::with_capacity(params.len());
        for (i, raw) in params.into_iter().enumerate() {
            let ty = prepared
                .param_types
                .get(i)
                .copied()
                .unwrap_or(SqlType::Text);
            let binary = wire::result_format(formats, i) == 1;
            let value = match raw {
                None => Ok(None),
                Some(raw) if binary => ty.decode_binary(&raw).map(Some),
                Some(raw) => String::from_utf8(raw.to_vec())
                    .map(Some)
                    .map_err(|_| "invalid UTF-8".to_owned()),
            };
            match value {
                Ok(v) => values.push(v),
                Err(message) => {
                    self.error(&errors::data(message));
                    self.skip_to_sync = true;
                    return;
                }
            }
        }
        let statement = prepared.statement.clone();
        self.portals.insert(
            portal,
            Portal {
                statement,
                params: values,
                result_formats,
            },
        );
        self.out.bind_complete();
    }

    fn describe(&mut self, kind: u8, name: &str) {
        let statement = if kind == b'S' {
            if let Some(p) = self.prepared.get(name) {
                let types = p.param_types.clone();
                self.out.parameter_description(&types);
                p.statement.clone()
            } else {
                self.error(&Error {
                    code: "26000",
                    message: format!("prepared statement \"{name}\" does not exist"),
                });
                self.skip_to_sync = true;
                return;
            }
        } else {
            if let Some(p) = self.portals.get(name) {
                p.statement.clone()
            } else {
                self.error(&Error {
                    code: "34000",
                    message: format!("portal \"{name}\" does not exist"),
                });
                self.skip_to_sync = true;
                return;
            }
        };
        let formats = if kind == b'P' {
            self.portals
                .get(name)
                .map(|p| p.result_formats.clone())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        match self.row_description(&statement) {
            Some(columns) => self.out.row_description(&columns, &formats),
            None => self.out.no_data(),
        }
    }

    /// The columns a statement returns, if it returns rows.
    fn row_description(&self, statement: &Statement) -> Option<Vec<(String, SqlType)>> {
        match statement {
            Statement::Select {
                items, star, from, ..
            } => {
                let table = from.as_ref().and_then(|name| {
                    let catalog = self.shared.store.lock();
                    catalog
                        .tables
                        .get(&table_key(name, &self.schema))
                        .map(|t| t.columns.clone())
                });
                Some(select_columns(items, *star, table.as_deref()))
            }
            Statement::Fetch { cursor, .. } => self
                .mz_cursors
                .get(cursor)
                .map(MzCursor::description)
                .or_else(|| self.rw_cursors.get(cursor).map(RwCursor::description)),
            Statement::Show { name } => Some(vec![(name.clone(), SqlType::Text)]),
            _ => None,
        }
    }

    async fn execute_portal(&mut self, name: &str) -> Result<(), Stop> {
        let Some(portal) = self.portals.get(name) else {
            self.error(&Error {
                code: "34000",
                message: format!("portal \"{name}\" does not exist"),
            });
            self.skip_to_sync = true;
            return Ok(());
        };
        let statement = portal.statement.clone();
        let params = portal.params.clone();
        let formats = portal.result_formats.clone();
        if statement == Statement::Empty {
            self.out.empty_query();
            return Ok(());
        }
        match self.execute(statement, params).await? {
            Ok(Outcome::Tag(tag)) => self.out.command_complete(&tag),
            Ok(Outcome::Rows { columns, rows, tag }) => {
                for row in &rows {
                    let mut values = Vec::with_capacity(row.len());
                    for (i, value) in row.iter().enumerate() {
                        let binary = wire::result_format(&formats, i) == 1;
                        values.push(match value {
                            None => None,
                            Some(text) if binary => match columns[i].1.to_binary(text) {
                                Ok(bytes) => Some(bytes),
                                Err(message) => {
                                    self.error(&errors::data(message));
                                    self.skip_to_sync = true;
                                    return Ok(());
                                }
                            },
                            Some(text) => Some(text.as_bytes().to_vec()),
                        });
                    }
                    self.out.data_row(&values);
                }
                self.out.command_complete(&tag);
            }
            Ok(Outcome::Copy(subscription)) => self.stream_copy(*subscription).await?,
            Err(err) => {
                self.error(&err);
                self.skip_to_sync = true;
            }
        }
        Ok(())
    }

    /// Runs one statement, racing the connection being killed and cancel requests.
    async fn execute(
        &mut self,
        statement: Statement,
        params: Vec<Option<String>>,
    ) -> Result<Result<Outcome, Error>, Stop> {
        if self.failed && !matches!(statement, Statement::Commit | Statement::Rollback) {
            return Ok(Err(Error {
                code: "25P02",
                message: "current transaction is aborted, commands ignored until end of transaction block".into(),
            }));
        }
        let cancel = CancellationToken::new();
        *self
            .cancel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cancel.clone();
        let kill = self.kill.clone();
        tokio::select! {
            () = kill.cancelled() => Err(Stop::Closed),
            () = cancel.cancelled() => Ok(Err(canceled())),
            result = self.run_statement(statement, params) => Ok(result),
        }
    }

    async fn stream_copy(&mut self, mut subscription: Subscription) -> Result<(), Stop> {
        let width = subscription.description().len();
        self.out.copy_out_response(width);
        self.flush().await?;
        self.streaming.store(true, Ordering::Relaxed);
        let cancel = self
            .cancel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut sent = 0u64;
        let result = loop {
            let next = tokio::select! {
                () = self.kill.cancelled() => return Err(Stop::Closed),
                () = cancel.cancelled() => break Err(canceled()),
                message = self.rx.recv() => match message {
                    None | Some(Frontend::Terminate) => return Err(Stop::Closed),
                    // Nothing a client sends stops COPY out (it cancels or disconnects);
                    // what it pipelines runs after.
                    Some(message) => {
                        self.deferred.push_back(message);
                        continue;
                    }
                },
                next = subscription.next() => next,
            };
            match next {
                Ok(Some(rows)) => {
                    sent += rows.len() as u64;
                    self.send_copy(&rows).await?;
                }
                Ok(None) => break Ok(()),
                Err(err) => break Err(err),
            }
        };
        self.streaming.store(self.has_cursors(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.out.copy_done();
                self.out.command_complete(&format!("COPY {sent}"));
            }
            Err(err) => self.error(&err),
        }
        Ok(())
    }

    async fn send_copy(&mut self, rows: &[OutRow]) -> Result<(), Stop> {
        match self.shared.options.chunking {
            Chunking::PerRow => {
                for row in rows {
                    self.out.copy_data(&copy_text(std::slice::from_ref(row)));
                }
                self.flush().await
            }
            Chunking::Random { max_bytes } => {
                let bytes = copy_text(rows);
                let mut at = 0;
                while at < bytes.len() {
                    let n = rand::rng().random_range(1..=max_bytes.max(1));
                    let end = (at + n).min(bytes.len());
                    self.out.copy_data(&bytes[at..end]);
                    self.flush().await?;
                    at = end;
                }
                Ok(())
            }
        }
    }

    fn has_cursors(&self) -> bool {
        !self.mz_cursors.is_empty() || !self.rw_cursors.is_empty()
    }

    /// The session's cluster and database must exist when a query needs them (Materialize
    /// accepts any `SET` and fails then).
    fn check_cluster(&self) -> Result<(), Error> {
        if self.database != "materialize" {
            return Err(Error {
                code: "XX000",
                message: format!("unknown database '{}'", self.database),
            });
        }
        if self.shared.options.clusters.contains(&self.cluster) {
            Ok(())
        } else {
            Err(errors::unknown_cluster(&self.cluster))
        }
    }

    #[allow(clippy::too_many_lines)] // one arm per statement reads better than a split
    async fn run_statement(
        &mut self,
        statement: Statement,
        params: Vec<Option<String>>,
    ) -> Result<Outcome, Error> {
        let store = self.shared.store.clone();
        match statement {
            Statement::Empty => Ok(Outcome::Tag(String::new())),
            Statement::CreateSchema => Ok(Outcome::Tag("CREATE SCHEMA".into())),
            Statement::Begin => {
                self.in_transaction = true;
                Ok(Outcome::Tag("BEGIN".into()))
            }
            Statement::Commit => {
                let failed = self.failed;
                self.end_transaction(!failed);
                Ok(Outcome::Tag(
                    if failed { "ROLLBACK" } else { "COMMIT" }.into(),
                ))
            }
            Statement::Rollback => {
                self.end_transaction(false);
                Ok(Outcome::Tag("ROLLBACK".into()))
            }
            Statement::Set { name, value } => {
                let value = value.trim_matches('\'').to_owned();
                match name.as_str() {
                    "cluster" => {
                        // Materialize accepts it and fails when a query needs the cluster.
                        if !self.shared.options.clusters.contains(&value) {
                            self.out
                                .notice(&format!("cluster \"{value}\" does not exist"));
                        }
                        self.cluster = value;
                    }
                    "search_path" => self.schema = value,
                    "database" => self.database = value,
                    _ => {}
                }
                Ok(Outcome::Tag("SET".into()))
            }
            Statement::Show { name } => {
                let value = match name.as_str() {
                    "cluster" => self.cluster.clone(),
                    "search_path" => self.schema.clone(),
                    "server_version" => "9.5.0".into(),
                    _ => String::new(),
                };
                Ok(Outcome::Rows {
                    columns: vec![(name, SqlType::Text)],
                    rows: vec![vec![Some(value)]],
                    tag: "SHOW".into(),
                })
            }
            Statement::CreateTable {
                name,
                columns,
                primary_key,
                if_not_exists,
            } => {
                let key = table_key(&name, &self.schema);
                if store.lock().tables.contains_key(&key) {
                    if if_not_exists {
                        return Ok(Outcome::Tag("CREATE TABLE".into()));
                    }
                    return Err(Error {
                        code: "42P07",
                        message: format!("catalog item '{}' already exists", name.name),
                    });
                }
                let columns: Vec<Column> = columns
                    .into_iter()
                    .map(|c| Column {
                        name: c.name,
                        ty: c.ty,
                        not_null: c.not_null,
                    })
                    .collect();
                let pk = primary_key
                    .iter()
                    .map(|k| {
                        columns
                            .iter()
                            .position(|c| c.name == *k)
                            .ok_or_else(|| errors::unknown_column(k))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                store.create_table(key, columns, pk);
                Ok(Outcome::Tag("CREATE TABLE".into()))
            }
            Statement::DropTable { name, if_exists } => {
                let removed = store
                    .lock()
                    .tables
                    .remove(&table_key(&name, &self.schema))
                    .is_some();
                if !removed && !if_exists {
                    return Err(errors::unknown_item(&name.name));
                }
                Ok(Outcome::Tag("DROP TABLE".into()))
            }
            Statement::AlterRetain { table, retain } => {
                let mut catalog = store.lock();
                let t = catalog
                    .tables
                    .get_mut(&table_key(&table, &self.schema))
                    .ok_or_else(|| errors::unknown_item(&table.name))?;
                t.retain = retain;
                Ok(Outcome::Tag("ALTER TABLE".into()))
            }
            Statement::Insert {
                table,
                columns,
                rows,
            } => self.insert(&table, columns.as_deref(), &rows, &params),
            Statement::Update {
                table,
                sets,
                filter,
            } => self.update(&table, Some(&sets), filter.as_ref(), &params),
            Statement::Delete { table, filter } => {
                self.update(&table, None, filter.as_ref(), &params)
            }
            Statement::Select {
                items,
                star,
                from,
                filter,
                order_by,
            } => self.select(
                &items,
                star,
                from.as_ref(),
                filter.as_ref(),
                &order_by,
                &params,
            ),
            Statement::Subscribe(_) => Err(Error {
                code: "0A000",
                message: "the stand-in serves SUBSCRIBE in COPY (…) TO STDOUT or DECLARE … CURSOR"
                    .into(),
            }),
            Statement::CopySubscribe(spec) => {
                self.check_cluster()?;
                let subscription = Subscription::start(store, &spec, params, &self.schema).await?;
                Ok(Outcome::Copy(Box::new(subscription)))
            }
            Statement::Declare { cursor, subscribe } => {
                if !self.in_transaction {
                    return Err(Error {
                        code: "25P01",
                        message: "DECLARE CURSOR can only be used in transaction blocks".into(),
                    });
                }
                self.check_cluster()?;
                let subscription =
                    Subscription::start(store, &subscribe, params, &self.schema).await?;
                self.mz_cursors.insert(cursor, MzCursor::new(subscription));
                self.streaming.store(true, Ordering::Relaxed);
                Ok(Outcome::Tag("DECLARE CURSOR".into()))
            }
            Statement::Fetch {
                cursor,
                count,
                timeout,
            } => {
                let (columns, rows) = if let Some(c) = self.mz_cursors.get_mut(&cursor) {
                    (c.description(), c.fetch(count, timeout).await?)
                } else if let Some(c) = self.rw_cursors.get_mut(&cursor) {
                    (c.description(), c.fetch(count, timeout).await?)
                } else {
                    return Err(Error {
                        code: "34000",
                        message: format!("cursor \"{cursor}\" does not exist"),
                    });
                };
                let tag = format!("FETCH {}", rows.len());
                Ok(Outcome::Rows { columns, rows, tag })
            }
            Statement::Close { cursor } => {
                self.mz_cursors.remove(&cursor);
                self.rw_cursors.remove(&cursor);
                self.streaming.store(self.has_cursors(), Ordering::Relaxed);
                Ok(Outcome::Tag("CLOSE CURSOR".into()))
            }
            Statement::CreateSubscription {
                name,
                table,
                retention,
                if_not_exists,
            } => {
                let key = table_key(&table, &self.schema);
                let mut catalog = store.lock();
                if !catalog.tables.contains_key(&key) {
                    return Err(Error {
                        code: "XX000",
                        message: format!(
                            "Failed to run the query\n\nCaused by these errors (recent errors listed first):\n  1: Catalog error\n  2: table or source not found: {}",
                            table.name
                        ),
                    });
                }
                if catalog.subscriptions.contains_key(&name) {
                    if if_not_exists {
                        return Ok(Outcome::Tag("CREATE_SUBSCRIPTION".into()));
                    }
                    return Err(Error {
                        code: "42P07",
                        message: format!("subscription {name} exists"),
                    });
                }
                catalog.subscriptions.insert(
                    name,
                    RwSubscription {
                        table: key,
                        retention,
                    },
                );
                Ok(Outcome::Tag("CREATE_SUBSCRIPTION".into()))
            }
            Statement::DropSubscription { name, if_exists } => {
                let removed = store.lock().subscriptions.remove(&name).is_some();
                if !removed && !if_exists {
                    return Err(Error {
                        code: "42704",
                        message: format!("subscription not found: {name}"),
                    });
                }
                Ok(Outcome::Tag("DROP_SUBSCRIPTION".into()))
            }
            Statement::DeclareSubscriptionCursor {
                cursor,
                subscription,
                since,
            } => {
                let start = match since {
                    Since::Now => Start::Now,
                    Since::Begin => Start::Begin,
                    Since::Full => Start::Full,
                    Since::At(expr) => {
                        let value = eval(
                            &expr,
                            &Scope {
                                columns: &[],
                                row: None,
                                params: &params,
                            },
                        )
                        .map_err(errors::syntax)?;
                        Start::Since(
                            value
                                .into_text()
                                .and_then(|t| t.parse().ok())
                                .ok_or_else(|| errors::syntax("SINCE takes a timestamp".into()))?,
                        )
                    }
                };
                let cursor_state = RwCursor::open(store, &subscription, start).await?;
                self.rw_cursors.insert(cursor, cursor_state);
                self.streaming.store(true, Ordering::Relaxed);
                Ok(Outcome::Tag("DECLARE_SUBSCRIPTION_CURSOR".into()))
            }
        }
    }

    fn end_transaction(&mut self, commit: bool) {
        let writes = std::mem::take(&mut self.writes);
        if commit && !writes.is_empty() {
            self.shared.store.commit(writes);
        }
        self.in_transaction = false;
        self.failed = false;
        self.mz_cursors.clear();
        self.streaming.store(self.has_cursors(), Ordering::Relaxed);
    }

    /// Records a statement's changes: in the open transaction, or committed at once.
    fn write(&mut self, key: String, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        if self.in_transaction {
            self.writes.push((key, changes));
        } else {
            self.shared.store.commit(vec![(key, changes)]);
        }
    }

    /// A table's columns and its rows as this session sees them (with its uncommitted writes).
    fn visible(&self, name: &Name) -> Result<Visible, Error> {
        let key = table_key(name, &self.schema);
        let catalog = self.shared.store.lock();
        let table = catalog
            .tables
            .get(&key)
            .ok_or_else(|| errors::unknown_item(&name.name))?;
        let mut rows = table.current.clone();
        for (k, changes) in &self.writes {
            if *k == key {
                for (row, diff) in changes {
                    let count = rows.entry(row.clone()).or_insert(0);
                    *count += diff;
                    if *count == 0 {
                        rows.remove(row);
                    }
                }
            }
        }
        Ok((key, table.columns.clone(), table.primary_key.clone(), rows))
    }

    /// `information_schema.columns`, as far as catalog readers (introspection) use it.
    fn information_schema_columns(&self) -> (Vec<Column>, HashMap<Row, i64>) {
        let column = |name: &str, ty| Column {
            name: name.into(),
            ty,
            not_null: false,
        };
        let columns = vec![
            column("table_schema", SqlType::Text),
            column("table_name", SqlType::Text),
            column("column_name", SqlType::Text),
            column("data_type", SqlType::Text),
            column("ordinal_position", SqlType::Int4),
        ];
        let catalog = self.shared.store.lock();
        let mut rows = HashMap::new();
        for (key, table) in &catalog.tables {
            let (schema, name) = key.split_once('.').unwrap_or(("public", key));
            for (i, c) in table.columns.iter().enumerate() {
                rows.insert(
                    vec![
                        Some(schema.to_owned()),
                        Some(name.to_owned()),
                        Some(c.name.clone()),
                        Some(c.ty.name().to_owned()),
                        Some((i + 1).to_string()),
                    ],
                    1,
                );
            }
        }
        (columns, rows)
    }

    /// A table's key, columns and primary key.
    fn table_meta(&self, name: &Name) -> Result<(String, Vec<Column>, Vec<usize>), Error> {
        let key = table_key(name, &self.schema);
        let catalog = self.shared.store.lock();
        let table = catalog
            .tables
            .get(&key)
            .ok_or_else(|| errors::unknown_item(&name.name))?;
        Ok((key, table.columns.clone(), table.primary_key.clone()))
    }

    /// Whether a row with primary key `k` exists, as this session sees the table (a scan,
    /// without copying the table).
    fn key_exists(&self, key: &str, pk: &[usize], k: &Row) -> bool {
        let matches = |row: &Row| pk.iter().zip(k).all(|(&i, v)| row[i] == *v);
        let mut count: i64 = {
            let catalog = self.shared.store.lock();
            catalog.tables.get(key).map_or(0, |table| {
                table
                    .current
                    .iter()
                    .filter(|(row, _)| matches(row))
                    .map(|(_, n)| *n)
                    .sum()
            })
        };
        for (table, changes) in &self.writes {
            if table == key {
                count += changes
                    .iter()
                    .filter(|(row, _)| matches(row))
                    .map(|(_, d)| *d)
                    .sum::<i64>();
            }
        }
        count > 0
    }

    fn insert(
        &mut self,
        name: &Name,
        names: Option<&[String]>,
        values: &[Vec<Expr>],
        params: &[Option<String>],
    ) -> Result<Outcome, Error> {
        let (key, columns, pk) = self.table_meta(name)?;
        let targets: Vec<usize> = match names {
            None => (0..columns.len()).collect(),
            Some(names) => names
                .iter()
                .map(|n| {
                    columns
                        .iter()
                        .position(|c| c.name == *n)
                        .ok_or_else(|| errors::unknown_column(n))
                })
                .collect::<Result<_, _>>()?,
        };
        let mut changes = Vec::new();
        let mut keys: Vec<Row> = Vec::new();
        for exprs in values {
            if exprs.len() != targets.len() {
                return Err(errors::syntax(
                    "INSERT has more expressions than target columns".into(),
                ));
            }
            let mut row: Row = vec![None; columns.len()];
            let scope = Scope {
                columns: &columns,
                row: None,
                params,
            };
            for (expr, &target) in exprs.iter().zip(&targets) {
                let value = eval(expr, &scope).map_err(errors::data)?;
                row[target] = value
                    .into_text()
                    .map(|t| columns[target].ty.normalize(&t))
                    .transpose()
                    .map_err(errors::data)?;
            }
            check_not_null(&columns, &row)?;
            if !pk.is_empty() {
                let k: Row = pk.iter().map(|&i| row[i].clone()).collect();
                if keys.contains(&k) || self.key_exists(&key, &pk, &k) {
                    return Err(Error {
                        code: "23505",
                        message: "duplicate key value violates unique constraint".into(),
                    });
                }
                keys.push(k);
            }
            changes.push((row, 1));
        }
        let n = changes.len();
        self.write(key, changes);
        Ok(Outcome::Tag(format!("INSERT 0 {n}")))
    }

    /// UPDATE (with `sets`) or DELETE (without).
    fn update(
        &mut self,
        name: &Name,
        sets: Option<&[(String, Expr)]>,
        filter: Option<&Expr>,
        params: &[Option<String>],
    ) -> Result<Outcome, Error> {
        let (key, columns, _, rows) = self.visible(name)?;
        let assignments: Vec<(usize, &Expr)> = match sets {
            None => Vec::new(),
            Some(sets) => sets
                .iter()
                .map(|(c, e)| {
                    columns
                        .iter()
                        .position(|col| col.name == *c)
                        .map(|i| (i, e))
                        .ok_or_else(|| errors::unknown_column(c))
                })
                .collect::<Result<_, _>>()?,
        };
        let mut changes = Vec::new();
        let mut touched = 0;
        for (row, count) in &rows {
            let scope = Scope {
                columns: &columns,
                row: Some(row),
                params,
            };
            if !holds(filter, &scope).map_err(errors::data)? {
                continue;
            }
            touched += count;
            if sets.is_none() {
                changes.push((row.clone(), -count));
            } else {
                {
                    let mut new = row.clone();
                    for &(i, expr) in &assignments {
                        let value = eval(expr, &scope).map_err(errors::data)?;
                        new[i] = value
                            .into_text()
                            .map(|t| columns[i].ty.normalize(&t))
                            .transpose()
                            .map_err(errors::data)?;
                    }
                    check_not_null(&columns, &new)?;
                    if new != *row {
                        for _ in 0..*count {
                            changes.push((row.clone(), -1));
                            changes.push((new.clone(), 1));
                        }
                    }
                }
            }
        }
        self.write(key, changes);
        let verb = if sets.is_some() { "UPDATE" } else { "DELETE" };
        Ok(Outcome::Tag(format!("{verb} {touched}")))
    }

    fn select(
        &self,
        items: &[Expr],
        star: bool,
        from: Option<&Name>,
        filter: Option<&Expr>,
        order_by: &[String],
        params: &[Option<String>],
    ) -> Result<Outcome, Error> {
        let (columns, rows) = match from {
            Some(name)
                if name.schema.as_deref() == Some("information_schema")
                    && name.name == "columns" =>
            {
                self.information_schema_columns()
            }
            Some(name) => {
                let (_, columns, _, rows) = self.visible(name)?;
                (columns, rows)
            }
            None => (Vec::new(), HashMap::from([(Vec::new(), 1)])),
        };
        let description = select_columns(items, star, from.map(|_| columns.as_slice()));
        let mut out = Vec::new();
        let mut sorted: Vec<(&Row, &i64)> = rows.iter().collect();
        let order: Vec<usize> = order_by
            .iter()
            .map(|c| {
                columns
                    .iter()
                    .position(|col| col.name == *c)
                    .ok_or_else(|| errors::unknown_column(c))
            })
            .collect::<Result<_, _>>()?;
        sorted.sort_by(|a, b| {
            for &i in &order {
                let (x, y) = (
                    column_val(&columns[i], a.0[i].as_ref()),
                    column_val(&columns[i], b.0[i].as_ref()),
                );
                if let Some(o) = crate::eval::compare(&x, &y)
                    && o != std::cmp::Ordering::Equal
                {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
        for (row, count) in sorted {
            let scope = Scope {
                columns: &columns,
                row: Some(row),
                params,
            };
            if !holds(filter, &scope).map_err(errors::data)? {
                continue;
            }
            let mut line: OutRow = Vec::new();
            if star {
                line.extend(row.iter().cloned());
            }
            for item in items {
                line.push(eval(item, &scope).map_err(errors::data)?.into_text());
            }
            for _ in 0..*count {
                out.push(line.clone());
            }
        }
        let tag = format!("SELECT {}", out.len());
        Ok(Outcome::Rows {
            columns: description,
            rows: out,
            tag,
        })
    }
}

fn canceled() -> Error {
    Error {
        code: "57014",
        message: "canceling statement due to user request".into(),
    }
}

fn check_not_null(columns: &[Column], row: &Row) -> Result<(), Error> {
    for (column, value) in columns.iter().zip(row) {
        if column.not_null && value.is_none() {
            return Err(Error {
                code: "23502",
                message: format!(
                    "null value in column \"{}\" violates not-null constraint",
                    column.name
                ),
            });
        }
    }
    Ok(())
}

fn select_columns(items: &[Expr], star: bool, table: Option<&[Column]>) -> Vec<(String, SqlType)> {
    let mut out = Vec::new();
    if star && let Some(columns) = table {
        out.extend(columns.iter().map(|c| (c.name.clone(), c.ty)));
    }
    for item in items {
        let column = match item {
            Expr::Column(name) => table.and_then(|cols| cols.iter().find(|c| c.name == *name)),
            _ => None,
        };
        out.push(match (item, column) {
            (_, Some(c)) => (c.name.clone(), c.ty),
            (Expr::Number(n), _) if !n.contains('.') => ("?column?".into(), SqlType::Int4),
            (Expr::Cast(_, ty), _) => ("?column?".into(), *ty),
            _ => ("?column?".into(), SqlType::Text),
        });
    }
    out
}

fn type_of_oid(oid: u32) -> Option<SqlType> {
    [
        SqlType::Int2,
        SqlType::Int4,
        SqlType::Int8,
        SqlType::Float4,
        SqlType::Float8,
        SqlType::Numeric,
        SqlType::Bool,
        SqlType::Text,
        SqlType::Timestamp,
        SqlType::TimestampTz,
        SqlType::Date,
        SqlType::Time,
        SqlType::Uuid,
        SqlType::Json,
        SqlType::Jsonb,
    ]
    .into_iter()
    .find(|t| t.oid() == oid)
    .or((oid == 1043).then_some(SqlType::Text))
}

/// Notes the type of the parameters in `expr`: the column a parameter is compared with or
/// assigned to, else `context`.
fn walk(
    expr: &Expr,
    columns: &[Column],
    context: Option<SqlType>,
    note: &mut dyn FnMut(usize, Option<SqlType>),
) {
    let type_of = |e: &Expr| match e {
        Expr::Column(name) => columns.iter().find(|c| c.name == *name).map(|c| c.ty),
        Expr::Cast(_, ty) => Some(*ty),
        _ => None,
    };
    match expr {
        Expr::Param(n) => note(*n, context),
        Expr::Binary(_, l, r) => {
            let hint = type_of(l).or_else(|| type_of(r)).or(context);
            walk(l, columns, hint, note);
            walk(r, columns, hint, note);
        }
        Expr::InList(e, list, _) => {
            let hint = type_of(e);
            walk(e, columns, hint, note);
            for item in list {
                walk(item, columns, hint, note);
            }
        }
        Expr::Neg(e) | Expr::Not(e) | Expr::IsNull(e, _) => walk(e, columns, context, note),
        Expr::Cast(e, ty) => walk(e, columns, Some(*ty), note),
        _ => {}
    }
}

/// The type of each `$n` parameter, from the column it is written to or compared with
/// (`text` where nothing says otherwise).
fn infer_params(statement: &Statement, session: &Session) -> Vec<SqlType> {
    let mut types: Vec<Option<SqlType>> = Vec::new();
    let mut note = |n: usize, ty: Option<SqlType>| {
        if types.len() < n {
            types.resize(n, None);
        }
        if types[n - 1].is_none() {
            types[n - 1] = ty;
        }
    };
    let columns_of = |name: &Name| -> Vec<Column> {
        let catalog = session.shared.store.lock();
        catalog
            .tables
            .get(&table_key(name, &session.schema))
            .map(|t| t.columns.clone())
            .unwrap_or_default()
    };
    match statement {
        Statement::Insert {
            table,
            columns: names,
            rows,
        } => {
            let columns = columns_of(table);
            let targets: Vec<Option<SqlType>> = match names {
                None => columns.iter().map(|c| Some(c.ty)).collect(),
                Some(names) => names
                    .iter()
                    .map(|n| columns.iter().find(|c| c.name == *n).map(|c| c.ty))
                    .collect(),
            };
            for row in rows {
                for (expr, ty) in row.iter().zip(&targets) {
                    walk(expr, &columns, *ty, &mut note);
                }
            }
        }
        Statement::Update {
            table,
            sets,
            filter,
        } => {
            let columns = columns_of(table);
            for (name, expr) in sets {
                let ty = columns.iter().find(|c| c.name == *name).map(|c| c.ty);
                walk(expr, &columns, ty, &mut note);
            }
            if let Some(f) = filter {
                walk(f, &columns, None, &mut note);
            }
        }
        Statement::Delete { table, filter }
        | Statement::Select {
            from: Some(table),
            filter,
            ..
        } => {
            let columns = columns_of(table);
            if let Some(f) = filter {
                walk(f, &columns, None, &mut note);
            }
        }
        Statement::CopySubscribe(s) | Statement::Declare { subscribe: s, .. } => {
            for e in s.as_of.iter().chain(s.up_to.iter()) {
                walk(e, &[], Some(SqlType::Int8), &mut note);
            }
        }
        Statement::DeclareSubscriptionCursor {
            since: Since::At(e),
            ..
        } => walk(e, &[], Some(SqlType::Int8), &mut note),
        _ => {}
    }
    types
        .into_iter()
        .map(|t| t.unwrap_or(SqlType::Text))
        .collect()
}
