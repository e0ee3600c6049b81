//! Parser for the TorchScript source under `code/` of a `torch.jit.save`d archive: the Python
//! subset TorchScript prints (shared/docs/torchscript-format.md §3.1, §4). Produces an AST
//! that keeps line numbers, so lowering errors and lint findings can point at
//! `code/<file>.py:<line>`. Parses scripted control flow too (`if`/`while`/`for`), so that the
//! lowering can reject it at its exact place. Called by `torchscript::read` per code file.

use std::fmt;

use crate::files::shown;

/// A parse failure at `line` of the file being parsed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Statement keywords of Python that TorchScript's serialized code may hold (scripted models) but
/// that no traced graph contains; each parses as [`StmtKind::Unsupported`].
pub const UNSUPPORTED_STATEMENTS: &[&str] = &["with", "try", "except", "finally", "raise", "assert", "del", "global", "nonlocal", "async", "await", "yield", "break", "continue"];

/// An expression. Types in annotations (`List[int]`, `Optional[Tensor]`) parse as expressions too.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Name(String),
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    /// `value.attr`
    Attr(Box<Expr>, String),
    /// `func(args…, kw=value…)`
    Call {
        func: Box<Expr>,
        args: Vec<Expr>,
        kwargs: Vec<(String, Expr)>,
    },
    List(Vec<Expr>),
    Tuple(Vec<Expr>),
    /// `value[index]`; an index list `a[b, c]` is a `Tuple` index.
    Subscript(Box<Expr>, Box<Expr>),
    /// `-e`
    Neg(Box<Expr>),
}

impl Expr {
    /// The dotted name of a plain `a.b.c` chain (`torch.linear`, `ops.prim.NumToTensor`).
    pub fn dotted(&self) -> Option<String> {
        match self {
            Expr::Name(n) => Some(n.clone()),
            Expr::Attr(v, a) => Some(format!("{}.{a}", v.dotted()?)),
            _ => None,
        }
    }
}

/// One statement with the line it starts on.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub line: usize,
    pub kind: StmtKind,
}

/// What a statement does.
#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `a = e`, `a, b, = e`, `x[i] = e` (targets are expressions), or an annotation
    /// `name : Type [= e]` (then `annotation` is set and `value` may be absent).
    Assign {
        targets: Vec<Expr>,
        annotation: Option<Expr>,
        value: Option<Expr>,
    },
    Return(Expr),
    Expr(Expr),
    If {
        cond: Expr,
        then: Vec<Stmt>,
        orelse: Vec<Stmt>,
    },
    While {
        cond: Expr,
        body: Vec<Stmt>,
    },
    For {
        target: Vec<Expr>,
        iter: Expr,
        body: Vec<Stmt>,
    },
    Pass,
    /// A Python statement TorchScript can hold but a traced model never does (`with`, `try`,
    /// `raise`, …): kept only so the converter can name it and its line; its block, if any, is
    /// parsed and dropped.
    Unsupported(&'static str),
    Def(FnDef),
    Class(ClassDef),
}

/// A `def`: parameters with optional type and default, return type, body.
#[derive(Clone, Debug, PartialEq)]
pub struct FnDef {
    pub name: String,
    pub params: Vec<Param>,
    pub returns: Option<Expr>,
    pub body: Vec<Stmt>,
    pub line: usize,
}

/// One parameter of a `def`.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub ty: Option<Expr>,
    pub default: Option<Expr>,
}

/// A `class Name(Base):` with its body statements (attribute annotations, `__parameters__`, defs).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassDef {
    pub name: String,
    pub bases: Vec<Expr>,
    pub body: Vec<Stmt>,
    pub line: usize,
}

impl ClassDef {
    /// The method named `name`.
    pub fn method(&self, name: &str) -> Option<&FnDef> {
        self.body.iter().find_map(|s| match &s.kind {
            StmtKind::Def(f) if f.name == name => Some(f),
            _ => None,
        })
    }

    /// The string list assigned to a class-level name such as `__parameters__`.
    pub fn string_list(&self, name: &str) -> Vec<String> {
        self.body
            .iter()
            .find_map(|s| match &s.kind {
                StmtKind::Assign {
                    targets,
                    value: Some(Expr::List(items)),
                    ..
                } if targets == &[Expr::Name(name.to_string())] => Some(
                    items
                        .iter()
                        .filter_map(|e| {
                            if let Expr::Str(s) = e {
                                Some(s.clone())
                            } else {
                                None
                            }
                        })
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Int(i64),
    Float(f64),
    Str(String),
    Op(&'static str),
    Newline,
    Indent,
    Dedent,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Name(n) => write!(f, "`{}`", shown(n)),
            Tok::Int(i) => write!(f, "`{i}`"),
            Tok::Float(x) => write!(f, "`{x}`"),
            Tok::Str(s) => write!(f, "\"{}\"", shown(s)),
            Tok::Op(o) => write!(f, "`{o}`"),
            Tok::Newline => f.write_str("end of line"),
            Tok::Indent => f.write_str("indent"),
            Tok::Dedent => f.write_str("dedent"),
            Tok::End => f.write_str("end of file"),
        }
    }
}

/// Operators and punctuation, longest first so `->` wins over `-`.
const OPS: &[&str] = &[
    "->", "==", "!=", "<=", ">=", "(", ")", "[", "]", ",", ":", "=", ".", "-", "+", "*", "/", "<",
    ">", "%", "@",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let mut toks = Vec::new();
    let mut indents = vec![0usize];
    let mut depth = 0usize; // open brackets: newlines inside are joined
    for (i, raw) in src.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| ParseError { line, message };
        let text = raw.trim_end();
        let body = text.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if depth == 0 {
            let col = text.len() - body.len();
            let top = indents.last().copied().unwrap_or(0);
            if col > top {
                indents.push(col);
                toks.push((Tok::Indent, line));
            }
            while col < indents.last().copied().unwrap_or(0) {
                indents.pop();
                toks.push((Tok::Dedent, line));
            }
            if col != indents.last().copied().unwrap_or(0) {
                return Err(err("inconsistent indentation".into()));
            }
        }
        let b = body.as_bytes();
        let mut p = 0;
        while p < b.len() {
            let c = b[p] as char;
            if c == ' ' || c == '\t' {
                p += 1;
            } else if c == '#' {
                break;
            } else if c.is_ascii_alphabetic() || c == '_' {
                let s = p;
                while p < b.len() && ((b[p] as char).is_ascii_alphanumeric() || b[p] == b'_') {
                    p += 1;
                }
                toks.push((Tok::Name(body[s..p].to_string()), line));
            } else if c.is_ascii_digit() {
                let s = p;
                while p < b.len() && (b[p] as char).is_ascii_digit() {
                    p += 1;
                }
                let mut float = false;
                if p < b.len() && b[p] == b'.' {
                    float = true;
                    p += 1;
                    while p < b.len() && (b[p] as char).is_ascii_digit() {
                        p += 1;
                    }
                }
                if p < b.len() && (b[p] == b'e' || b[p] == b'E') {
                    float = true;
                    p += 1;
                    if p < b.len() && (b[p] == b'-' || b[p] == b'+') {
                        p += 1;
                    }
                    while p < b.len() && (b[p] as char).is_ascii_digit() {
                        p += 1;
                    }
                }
                let t = &body[s..p];
                toks.push((
                    if float {
                        Tok::Float(t.parse().map_err(|_| err(format!("bad number `{}`", shown(t))))?)
                    } else {
                        // i64::MAX is printed for "to the end"; larger literals do not occur.
                        Tok::Int(
                            t.parse()
                                .map_err(|_| err(format!("integer `{}` out of range", shown(t))))?,
                        )
                    },
                    line,
                ));
            } else if c == '"' || c == '\'' {
                let mut s = String::new();
                p += 1;
                loop {
                    let Some(&ch) = b.get(p) else {
                        return Err(err("unterminated string".into()));
                    };
                    p += 1;
                    match ch as char {
                        q if q == c => break,
                        '\\' => {
                            let Some(&e) = b.get(p) else {
                                return Err(err("unterminated string".into()));
                            };
                            match e {
                                b'n' => s.push('\n'),
                                b't' => s.push('\t'),
                                _ => {
                                    // The escaped character may be a multi-byte UTF-8 sequence:
                                    // take it whole, so `p` stays on a char boundary.
                                    let len = body[p..].chars().next().map_or(1, char::len_utf8);
                                    s.push_str(&body[p..p + len]);
                                    p += len - 1;
                                }
                            }
                            p += 1;
                        }
                        _ => {
                            // Copy the whole UTF-8 sequence starting at this byte.
                            let start = p - 1;
                            let len = body[start..].chars().next().map_or(1, char::len_utf8);
                            s.push_str(&body[start..start + len]);
                            p = start + len;
                        }
                    }
                }
                toks.push((Tok::Str(s), line));
            } else if let Some(op) = OPS.iter().find(|o| body[p..].starts_with(**o)) {
                match *op {
                    "(" | "[" => depth += 1,
                    ")" | "]" => depth = depth.saturating_sub(1),
                    _ => {}
                }
                toks.push((Tok::Op(op), line));
                p += op.len();
            } else {
                return Err(err(format!("unexpected character `{c}`")));
            }
        }
        if depth == 0 {
            toks.push((Tok::Newline, line));
        }
    }
    let last = src.lines().count().max(1);
    for _ in 1..indents.len() {
        toks.push((Tok::Dedent, last));
    }
    toks.push((Tok::End, last));
    Ok(toks)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Blocks (and `elif` branches) open around the statement being parsed.
    blocks: usize,
}

/// Deepest expression nesting accepted (brackets, operands, and `.attr`/call/subscript chains,
/// which nest the AST just as deeply); deeper input is rejected instead of overflowing the
/// stack here or in the recursive walks, clones and drops of the AST.
const MAX_NESTING: usize = 200;
/// Deepest statement nesting accepted: indented blocks plus `elif` branches, which parse as an
/// `if` nested in the `else` of the one before. TorchScript prints a few levels at most.
const MAX_BLOCK_NESTING: usize = 100;

impl Parser {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map_or(&Tok::End, |t| &t.0)
    }
    fn line(&self) -> usize {
        self.toks.get(self.pos).map_or(0, |t| t.1)
    }
    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.line(),
            message: message.into(),
        })
    }
    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Tok::Op(o) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, op: &str) -> Result<(), ParseError> {
        if self.eat(op) {
            Ok(())
        } else {
            let got = self.peek().clone();
            self.err(format!("expected `{op}`, found {got}"))
        }
    }
    fn is_name(&self, n: &str) -> bool {
        matches!(self.peek(), Tok::Name(x) if x == n)
    }
    fn name(&mut self) -> Result<String, ParseError> {
        match self.next() {
            Tok::Name(n) => Ok(n),
            t => {
                self.pos -= 1;
                self.err(format!("expected a name, found {t}"))
            }
        }
    }

    /// Enters one more level of statement nesting, refusing more than [`MAX_BLOCK_NESTING`].
    fn enter(&mut self) -> Result<(), ParseError> {
        if self.blocks >= MAX_BLOCK_NESTING {
            return self.err(format!("statements nested more than {MAX_BLOCK_NESTING} levels deep"));
        }
        self.blocks += 1;
        Ok(())
    }

    fn block(&mut self) -> Result<Vec<Stmt>, ParseError> {
        self.enter()?;
        let body = self.block_body();
        self.blocks -= 1;
        body
    }

    fn block_body(&mut self) -> Result<Vec<Stmt>, ParseError> {
        self.expect(":")?;
        if !matches!(self.next(), Tok::Newline) {
            self.pos -= 1;
            return self.err("expected a new line after `:`");
        }
        if !matches!(self.next(), Tok::Indent) {
            self.pos -= 1;
            return self.err("expected an indented block");
        }
        let mut body = Vec::new();
        while !matches!(self.peek(), Tok::Dedent | Tok::End) {
            body.push(self.stmt()?);
        }
        self.eat_dedent();
        Ok(body)
    }

    fn eat_dedent(&mut self) {
        if matches!(self.peek(), Tok::Dedent) {
            self.pos += 1;
        }
    }

    fn end_of_line(&mut self) -> Result<(), ParseError> {
        match self.next() {
            Tok::Newline | Tok::End => Ok(()),
            t => {
                self.pos -= 1;
                self.err(format!("unexpected {t}"))
            }
        }
    }

    /// Parses one statement; an [`UNSUPPORTED_STATEMENTS`] keyword becomes
    /// [`StmtKind::Unsupported`] (with its block skipped) so the caller can refuse it by name.
    fn stmt(&mut self) -> Result<Stmt, ParseError> {
        let line = self.line();
        let kind = match self.peek().clone() {
            Tok::Name(k) if k == "class" => {
                self.pos += 1;
                let name = self.name()?;
                let mut bases = Vec::new();
                if self.eat("(") {
                    while !self.eat(")") {
                        bases.push(self.expr(0)?);
                        self.eat(",");
                    }
                }
                StmtKind::Class(ClassDef {
                    name,
                    bases,
                    body: self.block()?,
                    line,
                })
            }
            Tok::Name(k) if k == "def" => {
                self.pos += 1;
                let name = self.name()?;
                self.expect("(")?;
                let mut params = Vec::new();
                while !self.eat(")") {
                    let pname = self.name()?;
                    let ty = if self.eat(":") {
                        Some(self.expr(0)?)
                    } else {
                        None
                    };
                    let default = if self.eat("=") {
                        Some(self.expr(0)?)
                    } else {
                        None
                    };
                    params.push(Param {
                        name: pname,
                        ty,
                        default,
                    });
                    if !self.eat(",") && !matches!(self.peek(), Tok::Op(")")) {
                        return self.err("expected `,` or `)` in parameter list");
                    }
                }
                let returns = if self.eat("->") {
                    Some(self.expr(0)?)
                } else {
                    None
                };
                StmtKind::Def(FnDef {
                    name,
                    params,
                    returns,
                    body: self.block()?,
                    line,
                })
            }
            Tok::Name(k) if k == "return" => {
                self.pos += 1;
                let v = self.expr_list()?;
                self.end_of_line()?;
                StmtKind::Return(v)
            }
            Tok::Name(k) if UNSUPPORTED_STATEMENTS.contains(&k.as_str()) => {
                let keyword = UNSUPPORTED_STATEMENTS.iter().copied().find(|u| *u == k).unwrap_or("statement");
                self.pos += 1;
                // Skip the header up to its end of line, or to the `:` that opens its block.
                loop {
                    match self.peek() {
                        Tok::Newline | Tok::End => {
                            self.pos += 1;
                            break;
                        }
                        Tok::Op(":") if matches!(self.toks.get(self.pos + 1).map(|t| &t.0), Some(Tok::Newline)) => {
                            self.block()?;
                            break;
                        }
                        _ => self.pos += 1,
                    }
                }
                StmtKind::Unsupported(keyword)
            }
            Tok::Name(k) if k == "pass" => {
                self.pos += 1;
                self.end_of_line()?;
                StmtKind::Pass
            }
            Tok::Name(k) if k == "if" => {
                self.pos += 1;
                let cond = self.expr(0)?;
                let then = self.block()?;
                let orelse = if self.is_name("else") {
                    self.pos += 1;
                    self.block()?
                } else if self.is_name("elif") {
                    if let Some(t) = self.toks.get_mut(self.pos) {
                        t.0 = Tok::Name("if".into());
                    }
                    self.enter()?;
                    let branch = self.stmt();
                    self.blocks -= 1;
                    vec![branch?]
                } else {
                    Vec::new()
                };
                StmtKind::If { cond, then, orelse }
            }
            Tok::Name(k) if k == "while" => {
                self.pos += 1;
                let cond = self.expr(0)?;
                StmtKind::While {
                    cond,
                    body: self.block()?,
                }
            }
            Tok::Name(k) if k == "for" => {
                self.pos += 1;
                let mut target = vec![self.expr(0)?];
                while self.eat(",") {
                    if self.is_name("in") {
                        break;
                    }
                    target.push(self.expr(0)?);
                }
                if !self.is_name("in") {
                    return self.err("expected `in`");
                }
                self.pos += 1;
                let iter = self.expr(0)?;
                StmtKind::For {
                    target,
                    iter,
                    body: self.block()?,
                }
            }
            _ => {
                let first = self.expr_list()?;
                let kind = if self.eat(":") {
                    let annotation = Some(self.expr(0)?);
                    let value = if self.eat("=") {
                        Some(self.expr_list()?)
                    } else {
                        None
                    };
                    StmtKind::Assign {
                        targets: vec![first],
                        annotation,
                        value,
                    }
                } else if self.eat("=") {
                    let targets = match first {
                        Expr::Tuple(items) => items,
                        e => vec![e],
                    };
                    StmtKind::Assign {
                        targets,
                        annotation: None,
                        value: Some(self.expr_list()?),
                    }
                } else {
                    StmtKind::Expr(first)
                };
                self.end_of_line()?;
                kind
            }
        };
        Ok(Stmt { line, kind })
    }

    /// `e` or `e, e, …` (a bare tuple, with optional trailing comma).
    fn expr_list(&mut self) -> Result<Expr, ParseError> {
        let first = self.expr(0)?;
        if !matches!(self.peek(), Tok::Op(",")) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat(",") {
            if matches!(
                self.peek(),
                Tok::Newline | Tok::End | Tok::Op("=") | Tok::Op(":")
            ) {
                break;
            }
            items.push(self.expr(0)?);
        }
        Ok(Expr::Tuple(items))
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if depth > MAX_NESTING {
            return self.err("expression nested too deeply");
        }
        let mut e = match self.next() {
            Tok::Name(n) => match n.as_str() {
                "True" => Expr::Bool(true),
                "False" => Expr::Bool(false),
                "None" => Expr::None,
                // torch prints float infinities and NaN as bare names (`ord=inf`, `-inf`).
                "inf" => Expr::Float(f64::INFINITY),
                "nan" => Expr::Float(f64::NAN),
                _ => Expr::Name(n),
            },
            Tok::Int(i) => Expr::Int(i),
            Tok::Float(x) => Expr::Float(x),
            Tok::Str(s) => Expr::Str(s),
            Tok::Op("-") => match self.expr(depth + 1)? {
                Expr::Int(i) => Expr::Int(-i),
                Expr::Float(x) => Expr::Float(-x),
                e => Expr::Neg(Box::new(e)),
            },
            Tok::Op("(") => {
                if self.eat(")") {
                    Expr::Tuple(Vec::new())
                } else {
                    let first = self.expr(depth + 1)?;
                    if self.eat(")") {
                        first
                    } else {
                        let mut items = vec![first];
                        while self.eat(",") {
                            if matches!(self.peek(), Tok::Op(")")) {
                                break;
                            }
                            items.push(self.expr(depth + 1)?);
                        }
                        self.expect(")")?;
                        Expr::Tuple(items)
                    }
                }
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                while !self.eat("]") {
                    items.push(self.expr(depth + 1)?);
                    if !self.eat(",") && !matches!(self.peek(), Tok::Op("]")) {
                        return self.err("expected `,` or `]` in list");
                    }
                }
                Expr::List(items)
            }
            t => {
                self.pos -= 1;
                return self.err(format!("expected an expression, found {t}"));
            }
        };
        let mut depth = depth;
        loop {
            if matches!(self.peek(), Tok::Op("." | "(" | "[")) {
                depth += 1;
                if depth > MAX_NESTING {
                    return self.err("expression nested too deeply");
                }
            }
            if self.eat(".") {
                e = Expr::Attr(Box::new(e), self.name()?);
            } else if self.eat("(") {
                let (mut args, mut kwargs) = (Vec::new(), Vec::new());
                while !self.eat(")") {
                    let is_kw = matches!(self.peek(), Tok::Name(_))
                        && matches!(
                            self.toks.get(self.pos + 1).map(|t| &t.0),
                            Some(Tok::Op("="))
                        );
                    if is_kw {
                        let k = self.name()?;
                        self.expect("=")?;
                        kwargs.push((k, self.expr(depth + 1)?));
                    } else {
                        args.push(self.expr(depth + 1)?);
                    }
                    if !self.eat(",") && !matches!(self.peek(), Tok::Op(")")) {
                        return self.err("expected `,` or `)` in call");
                    }
                }
                e = Expr::Call {
                    func: Box::new(e),
                    args,
                    kwargs,
                };
            } else if self.eat("[") {
                let mut idx = vec![self.expr(depth + 1)?];
                while self.eat(",") {
                    if matches!(self.peek(), Tok::Op("]")) {
                        break;
                    }
                    idx.push(self.expr(depth + 1)?);
                }
                self.expect("]")?;
                let index = if idx.len() == 1 {
                    idx.remove(0)
                } else {
                    Expr::Tuple(idx)
                };
                e = Expr::Subscript(Box::new(e), Box::new(index));
            } else {
                break;
            }
        }
        if let Tok::Op(op @ ("+" | "*" | "/" | "<" | ">" | "==" | "!=" | "<=" | ">=" | "%" | "@")) =
            self.peek()
        {
            let op = *op;
            return self.err(format!(
                "operator `{op}` is not part of TorchScript's printed form"
            ));
        }
        Ok(e)
    }
}

/// Parses one TorchScript code file into its top-level statements (classes, mostly).
pub fn parse(src: &str) -> Result<Vec<Stmt>, ParseError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
        blocks: 0,
    };
    let mut out = Vec::new();
    loop {
        match p.peek() {
            Tok::End => return Ok(out),
            Tok::Newline | Tok::Dedent => p.pos += 1,
            _ => out.push(p.stmt()?),
        }
    }
}

/// The classes defined in a parsed file.
pub fn classes(stmts: &[Stmt]) -> impl Iterator<Item = &ClassDef> {
    stmts.iter().filter_map(|s| match &s.kind {
        StmtKind::Class(c) => Some(c),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_14_with_try_and_raise_parse_as_named_unsupported_statements() {
        // A scripted forward with a `with` block used to fail as "unexpected `_22`".
        let src = "def forward(self, x: Tensor) -> Tensor:\n  with torch.no_grad():\n    _22 = torch.relu(x)\n  try:\n    y = x\n  except:\n    pass\n  if bool(x):\n    raise Exception(\"bad\")\n  return x\n";
        let stmts = parse(src).unwrap();
        let StmtKind::Def(f) = &stmts[0].kind else { panic!("{stmts:?}") };
        let kinds: Vec<_> = f.body.iter().map(|s| (s.line, match &s.kind { StmtKind::Unsupported(k) => *k, StmtKind::If { .. } => "if", StmtKind::Return(_) => "return", _ => "?" })).collect();
        assert_eq!(kinds, [(2, "with"), (4, "try"), (6, "except"), (8, "if"), (10, "return")]);
        let StmtKind::If { then, .. } = &f.body[3].kind else { unreachable!() };
        assert_eq!(then[0].kind, StmtKind::Unsupported("raise"));
    }

    #[test]
    fn bare_inf_is_a_float() {
        let stmts = parse("y = torch.linalg_vector_norm(x, inf)\nz = -inf\n").unwrap();
        let StmtKind::Assign { value: Some(Expr::Call { args, .. }), .. } = &stmts[0].kind else { panic!("{stmts:?}") };
        assert_eq!(args[1], Expr::Float(f64::INFINITY));
        let StmtKind::Assign { value: Some(v), .. } = &stmts[1].kind else { panic!() };
        assert_eq!(*v, Expr::Float(f64::NEG_INFINITY));
    }

    /// The MLP example printed by torch 2.13 (torchscript-format.md §3 (a)).
    const MLP: &str = r#"class MLP(Module):
  __parameters__ = []
  __buffers__ = []
  training : bool
  _is_full_backward_hook : Optional[bool]
  fc1 : __torch__.torch.nn.modules.linear.Linear
  fc2 : __torch__.torch.nn.modules.linear.___torch_mangle_0.Linear
  def forward(self: __torch__.MLP,
    x: Tensor) -> Tensor:
    fc2 = self.fc2
    fc1 = self.fc1
    input = torch.relu((fc1).forward(x, ))
    _0 = (fc2).forward(input, )
    x1, x2, = torch.chunk(_0, 2, -1)
    return torch.softmax(x1, -1)
"#;

    #[test]
    fn parses_traced_class_with_multiline_signature() {
        let stmts = parse(MLP).unwrap();
        let class = classes(&stmts).next().unwrap();
        assert_eq!(class.name, "MLP");
        assert!(class.string_list("__parameters__").is_empty());
        let f = class.method("forward").unwrap();
        assert_eq!(
            f.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["self", "x"]
        );
        assert_eq!(f.body.len(), 6);
        assert_eq!(f.body[2].line, 12);
        let StmtKind::Assign {
            targets,
            value: Some(Expr::Call { func, args, .. }),
            ..
        } = &f.body[4].kind
        else {
            panic!()
        };
        assert_eq!(targets, &[Expr::Name("x1".into()), Expr::Name("x2".into())]);
        assert_eq!(func.dotted().as_deref(), Some("torch.chunk"));
        assert_eq!(args[2], Expr::Int(-1));
        let StmtKind::Return(Expr::Call { func, .. }) = &f.body[5].kind else {
            panic!()
        };
        assert_eq!(func.dotted().as_deref(), Some("torch.softmax"));
    }

    #[test]
    fn parses_literals_kwargs_subscripts_and_control_flow() {
        let src = "def f(self: T, mask: Optional[Tensor]=None) -> Tuple[Tensor, Tensor]:\n  a = torch.arange(1500, dtype=None, device=torch.device(\"cpu\"), pin_memory=False)\n  b = annotate(List[Optional[Tensor]], [a, None])\n  c = torch.layer_norm(a, [384], None, None, 9.9999999999999998e-13)\n  if bool(torch.gt(a, 0.)):\n    d = a\n  elif c:\n    pass\n  else:\n    ops.prim.RaiseException(\"AssertionError: bad\")\n  _3, x = torch.lt(0, 1), a\n  return (c, b[0])\n";
        let stmts = parse(src).unwrap();
        let StmtKind::Def(f) = &stmts[0].kind else {
            panic!()
        };
        assert_eq!(f.params[1].default, Some(Expr::None));
        let StmtKind::Assign {
            value: Some(Expr::Call { kwargs, .. }),
            ..
        } = &f.body[0].kind
        else {
            panic!()
        };
        assert_eq!(kwargs.len(), 3);
        let StmtKind::Assign {
            value: Some(Expr::Call { args, .. }),
            ..
        } = &f.body[2].kind
        else {
            panic!()
        };
        assert_eq!(args[4], Expr::Float(9.9999999999999998e-13));
        let StmtKind::If { orelse, .. } = &f.body[3].kind else {
            panic!()
        };
        assert!(matches!(orelse[0].kind, StmtKind::If { .. }));
        let StmtKind::Assign {
            targets,
            value: Some(Expr::Tuple(v)),
            ..
        } = &f.body[4].kind
        else {
            panic!()
        };
        assert_eq!((targets.len(), v.len()), (2, 2));
    }

    #[test]
    fn an_escaped_multibyte_character_is_taken_whole() {
        // Found by `make fuzz` (fuzz/regressions/code/): `\` before a 3-byte character left
        // the lexer inside it and slicing panicked.
        let toks = lex("x = \"\\\u{2603}a\"\n").unwrap();
        assert!(toks.iter().any(|(t, _)| matches!(t, Tok::Str(s) if s == "\u{2603}a")), "{toks:?}");
    }

    #[test]
    fn errors_name_the_line_and_never_panic() {
        assert_eq!(parse("def f(x):\n  y = (x\n").unwrap_err().line, 2);
        let e = parse("def f(x):\n  return x + 1\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("`+`"), "{e}");
        assert!(parse("def f(x):\n  return 99999999999999999999\n").is_err());
        let deep = format!(
            "def f(x):\n  return {}x{}\n",
            "(".repeat(1000),
            ")".repeat(1000)
        );
        assert!(parse(&deep).is_err());
        let chain = format!("def f(x):\n  return x{}\n", ".a".repeat(100_000));
        assert!(parse(&chain).unwrap_err().message.contains("nested too deeply"));
        let calls = format!("def f(x):\n  return x{}\n", "()".repeat(100_000));
        assert!(parse(&calls).is_err());
        let elifs = format!("def f(x):\n  if x:\n    pass\n{}", "  elif x:\n    pass\n".repeat(100_000));
        assert!(parse(&elifs).unwrap_err().message.contains("nested more than"));
        let blocks: String = (1..2000).map(|i| format!("{}if x:\n", " ".repeat(i))).collect();
        assert!(parse(&format!("def f(x):\n{blocks}{}pass\n", " ".repeat(2000))).is_err());
        let long = format!("def f(x):\n  return {}\n", "9".repeat(100_000));
        assert!(parse(&long).unwrap_err().to_string().len() < 400, "a long literal is not quoted whole");
        for cut in 0..MLP.len() {
            if MLP.is_char_boundary(cut) {
                let _ = parse(&MLP[..cut]);
            }
        }
    }
}
