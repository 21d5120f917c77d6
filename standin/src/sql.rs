//! The SQL the stand-in understands: enough DDL and DML for tests to create and change tables
//! (with `$n` parameters), transactions, `SET`, Materialize's `SUBSCRIBE` (plain, in `COPY … TO
//! STDOUT` and in `DECLARE … CURSOR`, read with `FETCH`) and RisingWave's subscriptions and
//! subscription cursors. Anything else is a syntax error naming what was not understood.

use std::time::Duration;

use crate::types::SqlType;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An identifier or keyword; `quoted` identifiers keep their case.
    Ident {
        text: String,
        quoted: bool,
    },
    Number(String),
    Str(String),
    Param(usize),
    Symbol(&'static str),
}

// A lexer is one loop over characters; split, its cases would lose their order.
#[allow(clippy::too_many_lines)]
fn lex(sql: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // E'…' escape strings.
            if (word == "E" || word == "e") && chars.get(i) == Some(&'\'') {
                let (text, next) = string(&chars, i, true)?;
                tokens.push(Token::Str(text));
                i = next;
            } else {
                tokens.push(Token::Ident {
                    text: word.to_ascii_lowercase(),
                    quoted: false,
                });
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || chars[i] == '.'
                    || ((chars[i] == 'e' || chars[i] == 'E')
                        && chars
                            .get(i + 1)
                            .is_some_and(|c| c.is_ascii_digit() || *c == '-' || *c == '+')))
            {
                if chars[i] == 'e' || chars[i] == 'E' {
                    i += 1;
                }
                i += 1;
            }
            tokens.push(Token::Number(chars[start..i].iter().collect()));
        } else if c == '\'' {
            let (text, next) = string(&chars, i, false)?;
            tokens.push(Token::Str(text));
            i = next;
        } else if c == '"' {
            let mut text = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated quoted identifier".into()),
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        text.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        text.push(ch);
                        i += 1;
                    }
                }
            }
            tokens.push(Token::Ident { text, quoted: true });
        } else if c == '$' && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let n: String = chars[start..i].iter().collect();
            tokens.push(Token::Param(n.parse().map_err(|_| "bad parameter")?));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let symbol = match two.as_str() {
                "<>" | "!=" => Some("<>"),
                "<=" => Some("<="),
                ">=" => Some(">="),
                "::" => Some("::"),
                "||" => Some("||"),
                _ => None,
            };
            if let Some(symbol) = symbol {
                tokens.push(Token::Symbol(symbol));
                i += 2;
                continue;
            }
            let symbol = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                ';' => ";",
                '.' => ".",
                '*' => "*",
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '+' => "+",
                '-' => "-",
                '/' => "/",
                '[' => "[",
                ']' => "]",
                other => return Err(format!("syntax error at or near \"{other}\"")),
            };
            tokens.push(Token::Symbol(symbol));
            i += 1;
        }
    }
    Ok(tokens)
}

fn string(chars: &[char], start: usize, escapes: bool) -> Result<(String, usize), String> {
    let mut text = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err("unterminated quoted string".into()),
            Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                text.push('\'');
                i += 2;
            }
            Some('\'') => return Ok((text, i + 1)),
            Some('\\') if escapes => {
                let next = chars.get(i + 1).copied().unwrap_or('\\');
                text.push(match next {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
                i += 2;
            }
            Some(&ch) => {
                text.push(ch);
                i += 1;
            }
        }
    }
}

/// A relation name: `[schema.]name` (a database prefix is dropped).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name {
    pub schema: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Null,
    Bool(bool),
    Number(String),
    Str(String),
    Param(usize),
    Column(String),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Binary(&'static str, Box<Expr>, Box<Expr>),
    IsNull(Box<Expr>, bool),
    InList(Box<Expr>, Vec<Expr>, bool),
    Cast(Box<Expr>, SqlType),
    /// A function call the stand-in evaluates itself (`now()`), by lower-case name.
    Call(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    Diff,
    Upsert(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub relation: Name,
    /// The SELECT list, if the subscribe names one (`*` is `None`).
    pub columns: Option<Vec<String>>,
    pub filter: Option<Expr>,
    pub envelope: Envelope,
    pub progress: bool,
    pub snapshot: bool,
    pub as_of: Option<Expr>,
    pub as_of_at_least: bool,
    pub up_to: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Since {
    Now,
    Begin,
    Full,
    At(Expr),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub name: String,
    pub ty: SqlType,
    pub not_null: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Empty,
    CreateSchema,
    CreateTable {
        name: Name,
        columns: Vec<ColumnSpec>,
        primary_key: Vec<String>,
        if_not_exists: bool,
    },
    DropTable {
        name: Name,
        if_exists: bool,
    },
    Insert {
        table: Name,
        columns: Option<Vec<String>>,
        rows: Vec<Vec<Expr>>,
    },
    Update {
        table: Name,
        sets: Vec<(String, Expr)>,
        filter: Option<Expr>,
    },
    Delete {
        table: Name,
        filter: Option<Expr>,
    },
    Select {
        items: Vec<Expr>,
        star: bool,
        from: Option<Name>,
        filter: Option<Expr>,
        order_by: Vec<String>,
    },
    Begin,
    Commit,
    Rollback,
    Set {
        name: String,
        value: String,
    },
    Show {
        name: String,
    },
    AlterRetain {
        table: Name,
        retain: Option<Duration>,
    },
    Subscribe(Subscribe),
    CopySubscribe(Subscribe),
    Declare {
        cursor: String,
        subscribe: Subscribe,
    },
    Fetch {
        cursor: String,
        count: Option<u64>,
        timeout: Option<Duration>,
    },
    Close {
        cursor: String,
    },
    CreateSubscription {
        name: String,
        table: Name,
        retention: Duration,
        if_not_exists: bool,
    },
    DropSubscription {
        name: String,
        if_exists: bool,
    },
    DeclareSubscriptionCursor {
        cursor: String,
        subscription: String,
        since: Since,
    },
}

/// Splits a query string into statements and parses each.
pub fn parse(sql: &str) -> Result<Vec<Statement>, String> {
    let tokens = lex(sql)?;
    let mut statements = Vec::new();
    for part in tokens.split(|t| *t == Token::Symbol(";")) {
        if part.is_empty() {
            continue;
        }
        let mut p = Parser { t: part, i: 0 };
        let statement = p.statement()?;
        if p.i < p.t.len() {
            return Err(format!("syntax error at or near {}", p.describe()));
        }
        statements.push(statement);
    }
    if statements.is_empty() {
        statements.push(Statement::Empty);
    }
    Ok(statements)
}

struct Parser<'a> {
    t: &'a [Token],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.t.get(self.i)
    }

    fn describe(&self) -> String {
        match self.peek() {
            None => "end of input".into(),
            Some(Token::Ident { text, .. }) => format!("\"{text}\""),
            Some(Token::Number(n)) => format!("\"{n}\""),
            Some(Token::Str(s)) => format!("'{s}'"),
            Some(Token::Param(n)) => format!("\"${n}\""),
            Some(Token::Symbol(s)) => format!("\"{s}\""),
        }
    }

    fn error<T>(&self) -> Result<T, String> {
        Err(format!("syntax error at or near {}", self.describe()))
    }

    /// Consumes the keyword if it is next.
    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident { text, quoted: false }) if text == word) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, word: &str) -> Result<(), String> {
        if self.keyword(word) {
            Ok(())
        } else {
            self.error()
        }
    }

    fn symbol(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Token::Symbol(x)) if *x == s) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_symbol(&mut self, s: &str) -> Result<(), String> {
        if self.symbol(s) { Ok(()) } else { self.error() }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Token::Ident { text, .. }) => {
                let text = text.clone();
                self.i += 1;
                Ok(text)
            }
            _ => self.error(),
        }
    }

    fn name(&mut self) -> Result<Name, String> {
        let mut parts = vec![self.ident()?];
        while self.symbol(".") {
            parts.push(self.ident()?);
        }
        let name = parts.pop().unwrap_or_default();
        Ok(Name {
            schema: parts.pop(),
            name,
        })
    }

    fn ident_list(&mut self) -> Result<Vec<String>, String> {
        self.expect_symbol("(")?;
        let mut out = vec![self.ident()?];
        while self.symbol(",") {
            out.push(self.ident()?);
        }
        self.expect_symbol(")")?;
        Ok(out)
    }

    fn string_literal(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(Token::Str(s)) => {
                let s = s.clone();
                self.i += 1;
                Ok(s)
            }
            _ => self.error(),
        }
    }

    // One branch per statement kind, in the order of the grammar.
    #[allow(clippy::too_many_lines)]
    fn statement(&mut self) -> Result<Statement, String> {
        if self.keyword("create") {
            return self.create();
        }
        if self.keyword("drop") {
            if self.keyword("subscription") {
                let if_exists = self.keyword("if") && self.keyword("exists");
                return Ok(Statement::DropSubscription {
                    name: self.name()?.name,
                    if_exists,
                });
            }
            self.expect_keyword("table")?;
            let if_exists = self.keyword("if") && self.keyword("exists");
            return Ok(Statement::DropTable {
                name: self.name()?,
                if_exists,
            });
        }
        if self.keyword("insert") {
            return self.insert();
        }
        if self.keyword("update") {
            let table = self.name()?;
            self.expect_keyword("set")?;
            let mut sets = Vec::new();
            loop {
                let column = self.ident()?;
                self.expect_symbol("=")?;
                sets.push((column, self.expr()?));
                if !self.symbol(",") {
                    break;
                }
            }
            let filter = if self.keyword("where") {
                Some(self.expr()?)
            } else {
                None
            };
            return Ok(Statement::Update {
                table,
                sets,
                filter,
            });
        }
        if self.keyword("delete") {
            self.expect_keyword("from")?;
            let table = self.name()?;
            let filter = if self.keyword("where") {
                Some(self.expr()?)
            } else {
                None
            };
            return Ok(Statement::Delete { table, filter });
        }
        if self.keyword("select") {
            return self.select();
        }
        if self.keyword("begin") || (self.keyword("start") && self.keyword("transaction")) {
            self.keyword("transaction");
            self.keyword("work");
            // BEGIN ISOLATION LEVEL … / READ ONLY: accepted and ignored.
            while self.peek().is_some() {
                self.i += 1;
            }
            return Ok(Statement::Begin);
        }
        if self.keyword("commit") || self.keyword("end") {
            return Ok(Statement::Commit);
        }
        if self.keyword("rollback") || self.keyword("abort") {
            return Ok(Statement::Rollback);
        }
        if self.keyword("set") {
            self.keyword("session");
            self.keyword("local");
            let name = self.ident()?;
            if !self.symbol("=") {
                self.expect_keyword("to")?;
            }
            let mut value = Vec::new();
            while let Some(token) = self.peek() {
                value.push(match token {
                    Token::Ident { text, .. } | Token::Number(text) | Token::Str(text) => {
                        text.clone()
                    }
                    Token::Symbol(s) => (*s).to_owned(),
                    Token::Param(n) => format!("${n}"),
                });
                self.i += 1;
            }
            return Ok(Statement::Set {
                name,
                value: value.join(" "),
            });
        }
        if self.keyword("show") {
            return Ok(Statement::Show {
                name: self.ident()?,
            });
        }
        if self.keyword("alter") {
            self.keyword("materialized");
            if !(self.keyword("table") || self.keyword("view") || self.keyword("source")) {
                return self.error();
            }
            let table = self.name()?;
            if self.keyword("reset") {
                self.expect_symbol("(")?;
                self.expect_keyword("retain")?;
                self.expect_keyword("history")?;
                self.expect_symbol(")")?;
                return Ok(Statement::AlterRetain {
                    table,
                    retain: None,
                });
            }
            self.expect_keyword("set")?;
            self.expect_symbol("(")?;
            self.expect_keyword("retain")?;
            self.expect_keyword("history")?;
            self.symbol("=");
            self.expect_keyword("for")?;
            let retain = duration(&self.string_literal()?)?;
            self.expect_symbol(")")?;
            return Ok(Statement::AlterRetain {
                table,
                retain: Some(retain),
            });
        }
        if self.keyword("subscribe") {
            return Ok(Statement::Subscribe(self.subscribe()?));
        }
        if self.keyword("copy") {
            self.expect_symbol("(")?;
            self.expect_keyword("subscribe")?;
            let subscribe = self.subscribe()?;
            self.expect_symbol(")")?;
            self.expect_keyword("to")?;
            self.expect_keyword("stdout")?;
            if self.keyword("with") {
                self.expect_symbol("(")?;
                self.expect_keyword("format")?;
                if !self.keyword("text") {
                    return Err("the stand-in supports COPY in text format only".into());
                }
                self.expect_symbol(")")?;
            }
            return Ok(Statement::CopySubscribe(subscribe));
        }
        if self.keyword("declare") {
            let cursor = self.ident()?;
            if self.keyword("subscription") {
                self.expect_keyword("cursor")?;
                self.expect_keyword("for")?;
                let subscription = self.name()?.name;
                let since = if self.keyword("full") {
                    Since::Full
                } else if self.keyword("since") {
                    if self.keyword("now") || self.keyword("proctime") {
                        self.expect_symbol("(")?;
                        self.expect_symbol(")")?;
                        Since::Now
                    } else if self.keyword("begin") {
                        self.expect_symbol("(")?;
                        self.expect_symbol(")")?;
                        Since::Begin
                    } else {
                        Since::At(self.expr()?)
                    }
                } else {
                    Since::Now
                };
                return Ok(Statement::DeclareSubscriptionCursor {
                    cursor,
                    subscription,
                    since,
                });
            }
            self.expect_keyword("cursor")?;
            if self.keyword("without") {
                self.expect_keyword("hold")?;
            }
            self.expect_keyword("for")?;
            self.expect_keyword("subscribe")?;
            return Ok(Statement::Declare {
                cursor,
                subscribe: self.subscribe()?,
            });
        }
        if self.keyword("fetch") {
            self.keyword("forward");
            let count = if self.keyword("all") {
                None
            } else if self.keyword("next") {
                Some(1)
            } else if let Some(Token::Number(n)) = self.peek() {
                let n = n.parse().map_err(|_| format!("bad FETCH count {n}"))?;
                self.i += 1;
                Some(n)
            } else {
                Some(1)
            };
            if !self.keyword("from") {
                self.keyword("in");
            }
            let cursor = self.ident()?;
            let mut timeout = None;
            if self.keyword("with") {
                self.expect_symbol("(")?;
                self.expect_keyword("timeout")?;
                self.symbol("=");
                timeout = Some(duration(&self.string_literal()?)?);
                self.expect_symbol(")")?;
            }
            return Ok(Statement::Fetch {
                cursor,
                count,
                timeout,
            });
        }
        if self.keyword("close") {
            return Ok(Statement::Close {
                cursor: self.ident()?,
            });
        }
        self.error()
    }

    fn create(&mut self) -> Result<Statement, String> {
        if self.keyword("schema") {
            // Schemas exist implicitly here (a table's key is `schema.name`).
            let _ = self.keyword("if") && self.keyword("not") && self.keyword("exists");
            self.ident()?;
            return Ok(Statement::CreateSchema);
        }
        if self.keyword("subscription") {
            let if_not_exists = self.keyword("if") && self.keyword("not") && self.keyword("exists");
            // Subscriptions live in one namespace here: a schema prefix is dropped.
            let name = self.name()?.name;
            self.expect_keyword("from")?;
            let table = self.name()?;
            let mut retention = Duration::from_secs(86_400);
            if self.keyword("with") {
                self.expect_symbol("(")?;
                self.expect_keyword("retention")?;
                self.expect_symbol("=")?;
                retention = duration(&self.string_literal()?)?;
                self.expect_symbol(")")?;
            }
            return Ok(Statement::CreateSubscription {
                name,
                table,
                retention,
                if_not_exists,
            });
        }
        self.expect_keyword("table")?;
        let if_not_exists = self.keyword("if") && self.keyword("not") && self.keyword("exists");
        let name = self.name()?;
        self.expect_symbol("(")?;
        let mut columns = Vec::new();
        let mut primary_key = Vec::new();
        loop {
            if self.keyword("primary") {
                self.expect_keyword("key")?;
                primary_key = self.ident_list()?;
            } else {
                let column = self.ident()?;
                let mut words = Vec::new();
                let mut not_null = false;
                loop {
                    let next = self.peek().cloned();
                    match next {
                        Some(Token::Symbol("," | ")")) | None => break,
                        Some(Token::Symbol("[")) => {
                            self.i += 1;
                            self.expect_symbol("]")?;
                            words.push("[]".to_owned());
                        }
                        Some(Token::Symbol("(")) => {
                            // varchar(255), numeric(10, 2): the modifier is ignored.
                            while !self.symbol(")") {
                                if self.peek().is_none() {
                                    return self.error();
                                }
                                self.i += 1;
                            }
                        }
                        _ if self.keyword("not") => {
                            self.expect_keyword("null")?;
                            not_null = true;
                        }
                        _ if self.keyword("null") => {}
                        _ if self.keyword("primary") => {
                            self.expect_keyword("key")?;
                            not_null = true;
                            primary_key = vec![column.clone()];
                        }
                        _ => words.push(self.ident()?),
                    }
                }
                let type_name = words.join(" ").replace(" []", "[]");
                let ty = SqlType::parse(&type_name)
                    .ok_or_else(|| format!("type \"{type_name}\" does not exist"))?;
                columns.push(ColumnSpec {
                    name: column,
                    ty,
                    not_null,
                });
            }
            if !self.symbol(",") {
                break;
            }
        }
        self.expect_symbol(")")?;
        Ok(Statement::CreateTable {
            name,
            columns,
            primary_key,
            if_not_exists,
        })
    }

    fn insert(&mut self) -> Result<Statement, String> {
        self.expect_keyword("into")?;
        let table = self.name()?;
        let columns = if matches!(self.peek(), Some(Token::Symbol("("))) {
            Some(self.ident_list()?)
        } else {
            None
        };
        self.expect_keyword("values")?;
        let mut rows = Vec::new();
        loop {
            self.expect_symbol("(")?;
            let mut row = vec![self.expr()?];
            while self.symbol(",") {
                row.push(self.expr()?);
            }
            self.expect_symbol(")")?;
            rows.push(row);
            if !self.symbol(",") {
                break;
            }
        }
        Ok(Statement::Insert {
            table,
            columns,
            rows,
        })
    }

    fn select(&mut self) -> Result<Statement, String> {
        let mut items = Vec::new();
        let mut star = false;
        loop {
            if self.symbol("*") {
                star = true;
            } else {
                items.push(self.expr()?);
            }
            if !self.symbol(",") {
                break;
            }
        }
        let from = if self.keyword("from") {
            Some(self.name()?)
        } else {
            None
        };
        let filter = if self.keyword("where") {
            Some(self.expr()?)
        } else {
            None
        };
        let mut order_by = Vec::new();
        if self.keyword("order") {
            self.expect_keyword("by")?;
            loop {
                order_by.push(self.ident()?);
                if !self.symbol(",") {
                    break;
                }
            }
        }
        Ok(Statement::Select {
            items,
            star,
            from,
            filter,
            order_by,
        })
    }

    fn subscribe(&mut self) -> Result<Subscribe, String> {
        self.keyword("to");
        let (relation, columns, filter) = if self.symbol("(") {
            self.expect_keyword("select")?;
            let columns = if self.symbol("*") {
                None
            } else {
                let mut columns = vec![self.ident()?];
                while self.symbol(",") {
                    columns.push(self.ident()?);
                }
                Some(columns)
            };
            self.expect_keyword("from")?;
            let relation = self.name()?;
            let filter = if self.keyword("where") {
                Some(self.expr()?)
            } else {
                None
            };
            self.expect_symbol(")")?;
            (relation, columns, filter)
        } else {
            (self.name()?, None, None)
        };
        let mut subscribe = Subscribe {
            relation,
            columns,
            filter,
            envelope: Envelope::Diff,
            progress: false,
            snapshot: true,
            as_of: None,
            as_of_at_least: false,
            up_to: None,
        };
        loop {
            if self.keyword("envelope") {
                if self.keyword("debezium") {
                    return Err("the stand-in does not implement ENVELOPE DEBEZIUM".into());
                }
                self.expect_keyword("upsert")?;
                self.expect_symbol("(")?;
                self.expect_keyword("key")?;
                subscribe.envelope = Envelope::Upsert(self.ident_list()?);
                self.expect_symbol(")")?;
            } else if self.keyword("with") {
                self.expect_symbol("(")?;
                loop {
                    let option = self.ident()?;
                    let value = if self.symbol("=") {
                        if self.keyword("true") {
                            true
                        } else if self.keyword("false") {
                            false
                        } else {
                            return self.error();
                        }
                    } else {
                        true
                    };
                    match option.as_str() {
                        "progress" => subscribe.progress = value,
                        "snapshot" => subscribe.snapshot = value,
                        other => return Err(format!("unexpected SUBSCRIBE option {other}")),
                    }
                    if !self.symbol(",") {
                        break;
                    }
                }
                self.expect_symbol(")")?;
            } else if self.keyword("as") {
                self.expect_keyword("of")?;
                if self.keyword("at") {
                    self.expect_keyword("least")?;
                    subscribe.as_of_at_least = true;
                }
                subscribe.as_of = Some(self.expr()?);
            } else if self.keyword("up") {
                self.expect_keyword("to")?;
                subscribe.up_to = Some(self.expr()?);
            } else {
                return Ok(subscribe);
            }
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.or()
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Expr::Binary("or", Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.not()?;
        while self.keyword("and") {
            left = Expr::Binary("and", Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.additive()?;
        if self.keyword("is") {
            let negated = self.keyword("not");
            self.expect_keyword("null")?;
            return Ok(Expr::IsNull(Box::new(left), negated));
        }
        let negated = self.keyword("not");
        if self.keyword("in") {
            self.expect_symbol("(")?;
            let mut list = vec![self.expr()?];
            while self.symbol(",") {
                list.push(self.expr()?);
            }
            self.expect_symbol(")")?;
            return Ok(Expr::InList(Box::new(left), list, negated));
        }
        if negated {
            return self.error();
        }
        for op in ["=", "<>", "<=", ">=", "<", ">"] {
            if self.symbol(op) {
                let right = self.additive()?;
                return Ok(Expr::Binary(op, Box::new(left), Box::new(right)));
            }
        }
        Ok(left)
    }

    fn additive(&mut self) -> Result<Expr, String> {
        let mut left = self.multiplicative()?;
        loop {
            let op = if self.symbol("+") {
                "+"
            } else if self.symbol("-") {
                "-"
            } else if self.symbol("||") {
                "||"
            } else {
                return Ok(left);
            };
            left = Expr::Binary(op, Box::new(left), Box::new(self.multiplicative()?));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        loop {
            let op = if self.symbol("*") {
                "*"
            } else if self.symbol("/") {
                "/"
            } else {
                return Ok(left);
            };
            left = Expr::Binary(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.symbol("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        let mut expr = self.primary()?;
        while self.symbol("::") {
            let mut words = vec![self.ident()?];
            while let Some(Token::Ident { quoted: false, .. }) = self.peek() {
                words.push(self.ident()?);
            }
            if self.symbol("[") {
                self.expect_symbol("]")?;
                words.push("[]".into());
            }
            let name = words.join(" ").replace(" []", "[]");
            let ty =
                SqlType::parse(&name).ok_or_else(|| format!("type \"{name}\" does not exist"))?;
            expr = Expr::Cast(Box::new(expr), ty);
        }
        Ok(expr)
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let token = self.peek().cloned();
        match token {
            Some(Token::Number(n)) => {
                self.i += 1;
                Ok(Expr::Number(n))
            }
            Some(Token::Str(s)) => {
                self.i += 1;
                Ok(Expr::Str(s))
            }
            Some(Token::Param(n)) => {
                self.i += 1;
                Ok(Expr::Param(n))
            }
            Some(Token::Symbol("(")) => {
                self.i += 1;
                let e = self.expr()?;
                self.expect_symbol(")")?;
                Ok(e)
            }
            Some(Token::Ident { text, quoted }) => {
                self.i += 1;
                if !quoted {
                    match text.as_str() {
                        "null" => return Ok(Expr::Null),
                        "true" => return Ok(Expr::Bool(true)),
                        "false" => return Ok(Expr::Bool(false)),
                        _ => {}
                    }
                    if self.symbol("(") {
                        self.expect_symbol(")")?;
                        return Ok(Expr::Call(text));
                    }
                }
                // table.column: keep the column.
                if self.symbol(".") {
                    return Ok(Expr::Column(self.ident()?));
                }
                Ok(Expr::Column(text))
            }
            _ => self.error(),
        }
    }
}

/// `'1s'`, `'500ms'`, `'2 hours'`, `'1D'`, `'1hr'`, `'10m'` (minutes).
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("invalid interval \"{text}\""))?;
    let seconds = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => n / 1000.0,
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" => n * 86_400.0,
        _ => return Err(format!("invalid interval \"{text}\"")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_in_copy_with_every_clause() {
        let parsed = parse(
            r#"COPY (SUBSCRIBE (SELECT "id", "Note" FROM "public"."t") ENVELOPE UPSERT (KEY ("id")) WITH (PROGRESS, SNAPSHOT = false) AS OF 41) TO STDOUT"#,
        )
        .unwrap();
        let Statement::CopySubscribe(s) = &parsed[0] else {
            panic!("{parsed:?}")
        };
        assert_eq!(s.relation.schema.as_deref(), Some("public"));
        assert_eq!(s.relation.name, "t");
        assert_eq!(s.columns, Some(vec!["id".into(), "Note".into()]));
        assert_eq!(s.envelope, Envelope::Upsert(vec!["id".into()]));
        assert!(s.progress && !s.snapshot);
        assert_eq!(s.as_of, Some(Expr::Number("41".into())));
    }

    #[test]
    fn dml_with_parameters_and_expressions() {
        let parsed = parse("UPDATE t SET v = v + $1, s = 'it''s' WHERE id IN (1, 2) AND NOT flag IS NULL; DELETE FROM t").unwrap();
        assert_eq!(parsed.len(), 2);
        let Statement::Update { sets, filter, .. } = &parsed[0] else {
            panic!()
        };
        assert_eq!(sets[1].1, Expr::Str("it's".into()));
        assert!(matches!(filter, Some(Expr::Binary("and", _, _))));
    }

    #[test]
    fn create_table_with_types_and_keys() {
        let parsed = parse("CREATE TABLE x (a int NOT NULL, b double precision, c varchar(10), d text[], PRIMARY KEY (a, c))").unwrap();
        let Statement::CreateTable {
            columns,
            primary_key,
            ..
        } = &parsed[0]
        else {
            panic!()
        };
        assert_eq!(columns[1].ty, SqlType::Float8);
        assert_eq!(columns[3].ty, SqlType::TextArray);
        assert_eq!(primary_key, &vec!["a".to_owned(), "c".to_owned()]);
    }

    #[test]
    fn risingwave_cursor_statements() {
        let parsed = parse("CREATE SUBSCRIPTION IF NOT EXISTS s FROM t WITH (retention = '1D'); DECLARE c SUBSCRIPTION CURSOR FOR s SINCE 1700000000000; FETCH 100 FROM c WITH (timeout = '1s')").unwrap();
        assert!(
            matches!(&parsed[0], Statement::CreateSubscription { retention, if_not_exists: true, .. } if retention.as_secs() == 86_400)
        );
        assert!(matches!(
            &parsed[1],
            Statement::DeclareSubscriptionCursor {
                since: Since::At(Expr::Number(_)),
                ..
            }
        ));
        assert!(
            matches!(&parsed[2], Statement::Fetch { count: Some(100), timeout: Some(t), .. } if t.as_secs() == 1)
        );
    }
}
