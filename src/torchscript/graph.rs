//! Turns a traced TorchScript archive into one MIL function: evaluates the root `forward`
//! symbolically with `self` bound to the module tree and the user's input shapes, inlines every
//! submodule `(m).forward(...)`, resolves `self.x` / `getattr` / `CONSTANTS.cN` to modules,
//! weights (consts, cast to the compute precision) and values, and sends each `torch.*` /
//! `ops.*` call through `lower::LOWERINGS`. Before any of that it scans every reachable
//! `forward` and fails once, listing every unsupported op with counts and locations, or
//! pointing at scripted control flow. Called by `convert`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::code::{self, ClassDef, Expr, FnDef, Stmt, StmtKind};
use super::lower::{self, Lower, Value};
use super::source_ranges::{Lines, SourceRanges};
use super::{Archive, Attribute, Error, Module, PyObject};
use crate::mil::builder::{Builder, Var};
use crate::mil::ops::elementwise as ew;
use crate::files::shown;
use crate::mil::{DType, Function, Opset, Source, SourceLine, Tensor, TensorType};

/// Most locations listed per unsupported op kind in the error line.
const MAX_LOCATIONS_SHOWN: usize = 3;
/// Most unsupported op kinds the error line lists; the rest are counted.
const MAX_KINDS_SHOWN: usize = 20;
/// Most statements inlined into one function: every submodule call inlines the callee's body,
/// so a submodule shared and called from many places at every level multiplies. 2^20 statements
/// is hundreds of times a traced 24-layer transformer and converts in a few seconds.
const MAX_INLINED_STATEMENTS: usize = 1 << 20;
/// Deepest submodule nesting followed; deeper (or recursive) module graphs are rejected.
const MAX_MODULE_DEPTH: usize = 64;

/// One model input as the user gives it: a name (matched to `forward`'s parameters, else by
/// position with a warning) and a type. int64 inputs become int32 package inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: Option<String>,
    pub ty: TensorType,
    /// The user named the dtype (`--input x:1x3:fp32`): a float input keeps it as the package's
    /// input type (cast to the compute precision inside, as coremltools does), instead of
    /// taking fp16 when computing in fp16 at iOS16+.
    pub keep_dtype: bool,
}

impl InputSpec {
    /// An input whose package dtype follows the defaults (see [`InputSpec::keep_dtype`]).
    pub fn new(name: Option<String>, ty: TensorType) -> InputSpec {
        InputSpec { name, ty, keep_dtype: false }
    }
}

/// How to convert.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub opset: Opset,
    /// Compute precision: fp16 or fp32.
    pub precision: DType,
    /// Float outputs are fp32 whatever the compute precision (the user asked for fp32 inputs).
    pub fp32_outputs: bool,
}

/// A torch op kind we do not lower, with where it appears.
#[derive(Clone, Debug, PartialEq)]
pub struct UnsupportedOp {
    pub kind: String,
    pub count: usize,
    pub locations: Vec<String>,
}

/// `aten::foo ×3 (code/a.py:12, code/b.py:7), aten::bar ×1 (code/a.py:30)`: at most
/// [`MAX_KINDS_SHOWN`] kinds, each name cut by `files::shown`, so the line stays short whatever
/// the file calls.
pub fn describe_unsupported(ops: &[UnsupportedOp]) -> String {
    let mut s = ops
        .iter()
        .take(MAX_KINDS_SHOWN)
        .map(|o| {
            let mut locs = o.locations.iter().take(MAX_LOCATIONS_SHOWN).map(|l| shown(l)).collect::<Vec<_>>().join(", ");
            if o.locations.len() > MAX_LOCATIONS_SHOWN {
                locs += ", …";
            }
            // A reason beyond "not lowered yet" tells the user what to change.
            let op = o.kind.strip_prefix("aten::").unwrap_or(&o.kind);
            let op = op.strip_suffix('_').filter(|f| !f.ends_with('_')).unwrap_or(op);
            match lower::refusal(op) {
                lower::NOT_YET => format!("{} ×{} ({locs})", shown(&o.kind), o.count),
                why => format!("{} ×{} ({locs}; {why})", shown(&o.kind), o.count),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    if ops.len() > MAX_KINDS_SHOWN {
        s += &format!(", and {} more kinds", ops.len() - MAX_KINDS_SHOWN);
    }
    s
}

/// The op kind a called name stands for (`torch.linear` → `aten::linear`), or `None` for names
/// the inliner handles itself (builtins, `torch.device`).
fn call_kind(name: &str) -> Option<String> {
    if let Some(op) = name.strip_prefix("torch.") {
        return (op != "device").then(|| format!("aten::{op}"));
    }
    if let Some(rest) = name.strip_prefix("ops.") {
        return Some(rest.replacen('.', "::", 1));
    }
    match name {
        "int" | "float" | "bool" | "getattr" | "annotate" | "unchecked_cast" => None,
        other => Some(other.to_string()),
    }
}

/// One parsed class: its code file, its definition, and its methods by name (index into the
/// body), so a call finds its method in constant time however long the class body is.
struct Class {
    file: String,
    def: ClassDef,
    methods: HashMap<String, usize>,
}

/// Parsed classes by qualified name (`__torch__.torch.nn.modules.linear.Linear`).
struct Classes(HashMap<String, Class>);

impl Classes {
    fn parse(archive: &Archive) -> Result<Classes, Error> {
        let mut map = HashMap::new();
        for (file, text) in &archive.code {
            let Some(module) = file.strip_prefix("code/").and_then(|f| f.strip_suffix(".py")) else { continue };
            let module = module.replace('/', ".");
            let stmts = code::parse(text).map_err(|source| Error::Parse { path: archive.path.clone(), file: shown(file), source })?;
            for stmt in stmts {
                let StmtKind::Class(def) = stmt.kind else { continue };
                let mut methods = HashMap::new();
                for (i, s) in def.body.iter().enumerate() {
                    if let StmtKind::Def(f) = &s.kind {
                        // The first definition wins, as `ClassDef::method` finds it.
                        methods.entry(f.name.clone()).or_insert(i);
                    }
                }
                map.insert(format!("{module}.{}", def.name), Class { file: file.clone(), def, methods });
            }
        }
        Ok(Classes(map))
    }

    fn method(&self, module: &Module, name: &str) -> Option<(&str, &FnDef)> {
        let class = self.0.get(&module.class.to_string())?;
        let stmt = class.def.body.get(*class.methods.get(name)?)?;
        match &stmt.kind {
            StmtKind::Def(f) => Some((class.file.as_str(), f)),
            _ => None,
        }
    }
}

/// Walks a statement list for calls and control flow.
fn scan(stmts: &[Stmt], file: &str, calls: &mut BTreeMap<String, Vec<String>>, flow: &mut Option<(&'static str, String)>) {
    fn expr(e: &Expr, loc: &str, calls: &mut BTreeMap<String, Vec<String>>) {
        match e {
            Expr::Call { func, args, kwargs } => {
                match (func.as_ref(), func.dotted()) {
                    (_, Some(name)) if name.starts_with("torch.") || name.starts_with("ops.") || !name.contains('.') => {
                        if let Some(kind) = call_kind(&name) {
                            calls.entry(kind).or_default().push(loc.to_string());
                        }
                    }
                    // `(submodule).method(...)`: inlined, its own body is scanned with its class.
                    (Expr::Attr(target, _), _) => expr(target, loc, calls),
                    _ => expr(func, loc, calls),
                }
                args.iter().chain(kwargs.iter().map(|(_, v)| v)).for_each(|a| expr(a, loc, calls));
            }
            Expr::Attr(v, _) | Expr::Neg(v) => expr(v, loc, calls),
            Expr::List(items) | Expr::Tuple(items) => items.iter().for_each(|a| expr(a, loc, calls)),
            Expr::Subscript(v, i) => {
                expr(v, loc, calls);
                expr(i, loc, calls);
            }
            _ => {}
        }
    }
    for s in stmts {
        let loc = format!("{file}:{}", s.line);
        match &s.kind {
            StmtKind::Assign { value: Some(v), .. } | StmtKind::Return(v) | StmtKind::Expr(v) => expr(v, &loc, calls),
            StmtKind::If { .. } | StmtKind::While { .. } | StmtKind::For { .. } | StmtKind::Unsupported(_) if flow.is_none() => {
                let kw = match s.kind {
                    StmtKind::If { .. } => "if",
                    StmtKind::While { .. } => "while",
                    StmtKind::Unsupported(keyword) => keyword,
                    _ => "for",
                };
                *flow = Some((kw, loc));
            }
            _ => {}
        }
    }
}

/// Fails with every unsupported op (or the first control flow) in the forwards reachable from
/// the root module; every instance's class counts once.
fn check_supported(archive: &Archive, classes: &Classes) -> Result<(), Error> {
    let mut calls = BTreeMap::new();
    let mut flow = None;
    let mut seen = std::collections::HashSet::new();
    // Modules already walked, by identity: a pickle may share one submodule under many
    // attributes at every level, and walking each path would be exponential.
    let mut walked = std::collections::HashSet::new();
    let mut stack = vec![(Arc::clone(&archive.root), 0usize)];
    while let Some((m, depth)) = stack.pop() {
        if depth > MAX_MODULE_DEPTH {
            return Err(Error::Lower { path: archive.path.clone(), location: shown(&m.class.to_string()), message: "module tree too deep".into() });
        }
        if !walked.insert(Arc::as_ptr(&m)) {
            continue;
        }
        if seen.insert(m.class.to_string()) {
            if let Some(class) = classes.0.get(&m.class.to_string()) {
                for s in &class.def.body {
                    if let StmtKind::Def(f) = &s.kind {
                        scan(&f.body, &class.file, &mut calls, &mut flow);
                    }
                }
            }
        }
        for (_, a) in &m.attributes {
            if let Attribute::Module(child) = a {
                stack.push((Arc::clone(child), depth + 1));
            }
        }
    }
    if let Some((keyword, location)) = flow {
        return Err(Error::ControlFlow { path: archive.path.clone(), keyword, location });
    }
    let ops: Vec<UnsupportedOp> = calls
        .into_iter()
        .filter(|(kind, _)| lower::lookup(kind).is_none())
        .map(|(kind, locations)| UnsupportedOp { kind, count: locations.len(), locations })
        .collect();
    if ops.is_empty() {
        Ok(())
    } else {
        Err(Error::Unsupported { path: archive.path.clone(), ops })
    }
}

/// A value while inlining: a lowering value, a module (with its dotted path), or `CONSTANTS`.
#[derive(Clone)]
enum Val {
    V(Value),
    Module(Arc<Module>, String),
    Constants,
    /// A tensor an in-place op wrote through a view of it (`y[:, 1:3] = b` traces as a slice of
    /// `y`, then an in-place op on the slice): its value is not tracked, so reading it is an
    /// error (this message) rather than the value from before the write.
    Stale(String),
}

struct Inliner<'a> {
    archive: &'a Archive,
    classes: &'a Classes,
    lower: Lower,
    weights: HashMap<*const super::TorchTensor, Var>,
    /// `code/…py:LINE` of the statement being lowered, for error messages.
    location: String,
    /// The same statement as the [`Source`] its ops record (also set on the Builder).
    source: Option<Arc<Source>>,
    /// One `Source` per code line lowered, shared by every op the line makes.
    sources: HashMap<(String, usize), Arc<Source>>,
    /// Statements still allowed to be inlined ([`MAX_INLINED_STATEMENTS`] at the start).
    budget: usize,
    /// Each code file's line index and debug_pkl table (`None`: absent or unreadable), made on
    /// first use.
    files: HashMap<String, (Lines, Option<SourceRanges>)>,
}

impl Inliner<'_> {
    /// Makes `file:line` the statement being lowered: errors name it and new ops record it.
    /// Constant time per statement after the first in a file: the file's line index and
    /// debug_pkl table are built once and kept, so lowering stays linear in the statements.
    fn at(&mut self, file: &str, line: usize) {
        self.location = format!("{file}:{line}");
        if let Some(source) = self.sources.get(&(file.to_string(), line)) {
            self.source = Some(Arc::clone(source));
            self.lower.b.set_source(self.source.clone());
            return;
        }
        let archive = self.archive;
        let code = archive.code.get(file).map(String::as_str).unwrap_or_default();
        let (lines, ranges) = self.files.entry(file.to_string()).or_insert_with(|| (Lines::new(code), archive.source_ranges(file)));
        let source = Arc::new(Source {
            code: SourceLine { file: file.to_string(), line },
            text: lines.text(code, line).to_string(),
            original: lines.range(line).and_then(|r| ranges.as_ref()?.original(r)).cloned(),
        });
        self.sources.insert((file.to_string(), line), Arc::clone(&source));
        self.source = Some(source);
        self.lower.b.set_source(self.source.clone());
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Lower { path: self.archive.path.clone(), location: self.location.clone(), message: message.into() }
    }

    fn weight(&mut self, name: &str, t: &Arc<super::TorchTensor>) -> Result<Value, Error> {
        if let Some(v) = self.weights.get(&Arc::as_ptr(t)) {
            return Ok(Value::Tensor(v.clone()));
        }
        let tensor = t.to_tensor()?;
        let tensor = if tensor.dtype() == DType::I64 { to_i32(&tensor).map_err(|m| self.err(m))? } else { tensor };
        let var = self.lower.weight(name, &tensor).map_err(|m| self.err(m))?;
        self.weights.insert(Arc::as_ptr(t), var.clone());
        Ok(Value::Tensor(var))
    }

    /// A pickled attribute or constant as a lowering value. Pickles share values (memo), but
    /// `Value` trees do not: a crafted pickle of tuples nesting one shared tuple ("billion laughs")
    /// would expand exponentially, so the expanded size is counted first, up to [`MAX_PY_VALUES`].
    fn py(&mut self, name: &str, o: &PyObject) -> Result<Value, Error> {
        let mut left = MAX_PY_VALUES;
        if !fits_expanded(o, &mut left) {
            return Err(self.err(format!("attribute `{}` expands to more than {MAX_PY_VALUES} values (shared pickle values nested)", shown(name))));
        }
        self.py_tree(name, o)
    }

    fn py_tree(&mut self, name: &str, o: &PyObject) -> Result<Value, Error> {
        Ok(match o {
            PyObject::None => Value::None,
            PyObject::Bool(b) => Value::Bool(*b),
            PyObject::Int(i) => Value::Int(*i),
            PyObject::Float(x) => Value::Float(*x),
            PyObject::Str(s) => Value::Str(s.to_string()),
            PyObject::Tuple(items) => Value::Tuple(items.iter().map(|i| self.py_tree(name, i)).collect::<Result<_, _>>()?),
            PyObject::List(items) => Value::List(items.iter().map(|i| self.py_tree(name, i)).collect::<Result<_, _>>()?),
            PyObject::Tensor(t) => self.weight(name, t)?,
            PyObject::Device(_) => Value::Device,
            other => return Err(self.err(format!("attribute `{}` holds {}, which cannot be converted", shown(name), super::kind(other)))),
        })
    }

    fn attr(&mut self, base: Val, name: &str) -> Result<Val, Error> {
        match base {
            Val::Module(m, path) => {
                let full = if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
                match m.get(name) {
                    Some(Attribute::Module(c)) => Ok(Val::Module(Arc::clone(c), full)),
                    Some(Attribute::Tensor(t)) => Ok(Val::V(self.weight(&full, &Arc::clone(t))?)),
                    Some(Attribute::Value(o)) => Ok(Val::V(self.py(&full, &o.clone())?)),
                    None => Err(self.err(format!("module `{}` has no attribute `{}`", shown(&m.class.to_string()), shown(name)))),
                }
            }
            Val::Constants => {
                let i: usize = name.strip_prefix('c').and_then(|n| n.parse().ok()).ok_or_else(|| self.err(format!("bad constant `{}`", shown(name))))?;
                let o = self.archive.constants.get(i).cloned().ok_or_else(|| self.err(format!("CONSTANTS.{} does not exist", shown(name))))?;
                Ok(Val::V(self.py(&format!("constant_{i}"), &o)?))
            }
            Val::V(v) => Err(self.err(format!("attribute `{}` of a value ({})", shown(name), v.describe()))),
            Val::Stale(why) => Err(self.err(why)),
        }
    }

    /// A one-element const tensor as the number it holds (what `int(NumToTensor(...))` reads).
    fn const_scalar(&self, v: Value) -> Value {
        let Value::Tensor(t) = &v else { return v };
        let Some(c) = self.lower.b.value(t).filter(|c| c.len() == 1) else { return v };
        match (c.to_i64_vec(), c.to_f32_vec()) {
            (Some(i), _) if c.dtype() == DType::Bool => Value::Bool(i[0] != 0),
            (Some(i), _) => Value::Int(i[0]),
            (None, Some(f)) => Value::Float(f64::from(f[0])),
            _ => v,
        }
    }

    fn value(&self, v: Val) -> Result<Value, Error> {
        match v {
            Val::V(v) => Ok(v),
            Val::Module(m, _) => Err(self.err(format!("module `{}` used as a value", shown(&m.class.to_string())))),
            Val::Constants => Err(self.err("CONSTANTS used as a value")),
            Val::Stale(why) => Err(self.err(why)),
        }
    }

    fn eval(&mut self, e: &Expr, env: &HashMap<String, Val>, depth: usize) -> Result<Val, Error> {
        Ok(match e {
            Expr::Name(n) if n == "CONSTANTS" => Val::Constants,
            Expr::Name(n) => match env.get(n).cloned() {
                Some(Val::Stale(why)) => return Err(self.err(why)),
                v => v.ok_or_else(|| self.err(format!("`{}` is not defined", shown(n))))?,
            },
            Expr::Int(i) => Val::V(Value::Int(*i)),
            Expr::Float(x) => Val::V(Value::Float(*x)),
            Expr::Str(s) => Val::V(Value::Str(s.clone())),
            Expr::Bool(b) => Val::V(Value::Bool(*b)),
            Expr::None => Val::V(Value::None),
            Expr::Neg(v) => match self.eval(v, env, depth)? {
                Val::V(Value::Int(i)) => Val::V(Value::Int(i.checked_neg().ok_or_else(|| self.err(format!("-({i}) overflows int64")))?)),
                Val::V(Value::Float(x)) => Val::V(Value::Float(-x)),
                _ => return Err(self.err("negation of a non-number")),
            },
            Expr::Attr(base, name) => {
                let b = self.eval(base, env, depth)?;
                self.attr(b, name)?
            }
            Expr::List(items) | Expr::Tuple(items) => {
                let vs = items.iter().map(|i| self.eval(i, env, depth).and_then(|v| self.value(v))).collect::<Result<Vec<_>, _>>()?;
                Val::V(if matches!(e, Expr::List(_)) { Value::List(vs) } else { Value::Tuple(vs) })
            }
            Expr::Subscript(base, idx) => {
                let b = self.eval(base, env, depth).and_then(|v| self.value(v))?;
                let i = self.eval(idx, env, depth).and_then(|v| self.value(v))?;
                match (b, i) {
                    (Value::List(items) | Value::Tuple(items), Value::Int(i)) => {
                        let j = if i < 0 { i.checked_add_unsigned(items.len() as u64) } else { Some(i) };
                        let item = j.and_then(|j| usize::try_from(j).ok()).and_then(|j| items.get(j));
                        item.cloned().map(Val::V).ok_or_else(|| self.err(format!("index {i} out of range")))?
                    }
                    _ => return Err(self.err("unsupported subscript")),
                }
            }
            Expr::Call { func, args, kwargs } => return self.call(func, args, kwargs, env, depth),
        })
    }

    fn call(&mut self, func: &Expr, args: &[Expr], kwargs: &[(String, Expr)], env: &HashMap<String, Val>, depth: usize) -> Result<Val, Error> {
        if let Expr::Attr(target, method) = func {
            let is_op = func.dotted().is_some_and(|n| n.starts_with("torch.") || n.starts_with("ops."));
            if !is_op {
                let Val::Module(m, path) = self.eval(target, env, depth)? else {
                    return Err(self.err(format!("`.{}` called on a value, not a module", shown(method))));
                };
                let vals = args.iter().map(|a| self.eval(a, env, depth)).collect::<Result<Vec<_>, _>>()?;
                // The rest of the calling statement is the caller's again.
                let (location, source) = (self.location.clone(), self.source.clone());
                let result = self.method(&m, &path, method, vals, depth + 1);
                self.location = location;
                self.lower.b.set_source(source.clone());
                self.source = source;
                return result;
            }
        }
        let name = func.dotted().ok_or_else(|| self.err("call of a computed function"))?;
        if name == "annotate" || name == "unchecked_cast" {
            // The first argument is a type (`number`, `List[int]`), not a value.
            let [_, value] = args else { return Err(self.err(format!("{} needs 2 arguments", shown(&name)))) };
            return self.eval(value, env, depth);
        }
        let mut vals = Vec::with_capacity(args.len());
        for a in args {
            vals.push(self.eval(a, env, depth)?);
        }
        match name.as_str() {
            "getattr" => {
                let [base, Val::V(Value::Str(attr))] = <[Val; 2]>::try_from(vals).map_err(|_| self.err("getattr needs 2 arguments"))? else {
                    return Err(self.err("getattr with a computed name"));
                };
                return self.attr(base, &attr);
            }
            "int" | "float" | "bool" => {
                let v = vals.pop().map(|v| self.value(v)).transpose()?.ok_or_else(|| self.err(format!("{name}() needs an argument")))?;
                let v = self.const_scalar(v);
                return Ok(Val::V(match (name.as_str(), v) {
                    ("int", Value::Int(i)) => Value::Int(i),
                    ("int", Value::Float(x)) => Value::Int(x as i64),
                    ("float", Value::Int(i)) => Value::Float(i as f64),
                    ("float", Value::Float(x)) => Value::Float(x),
                    ("bool", Value::Bool(b)) => Value::Bool(b),
                    ("bool", Value::Int(i)) => Value::Bool(i != 0),
                    (_, v) => return Err(self.err(format!("{name}() of a computed value ({}): the model depends on data at conversion time", v.describe()))),
                }));
            }
            "torch.device" => return Ok(Val::V(Value::Device)),
            _ => {}
        }
        let kind = call_kind(&name).ok_or_else(|| self.err(format!("cannot call `{}`", shown(&name))))?;
        let lowering = lower::lookup(&kind).ok_or_else(|| self.err(format!("{} is not supported", shown(&kind))))?;
        let values = vals.into_iter().map(|v| self.value(v)).collect::<Result<Vec<_>, _>>()?;
        let mut kw = Vec::with_capacity(kwargs.len());
        for (k, e) in kwargs {
            let v = self.eval(e, env, depth).and_then(|v| self.value(v))?;
            kw.push((k.clone(), v));
        }
        let normalized = Lower::normalize(lowering, values, kw).map_err(|m| self.err(m))?;
        (lowering.lower)(&mut self.lower, &normalized).map(Val::V).map_err(|m| self.err(format!("{kind}: {m}")))
    }

    fn method(&mut self, m: &Arc<Module>, path: &str, name: &str, args: Vec<Val>, depth: usize) -> Result<Val, Error> {
        if depth > MAX_MODULE_DEPTH {
            return Err(self.err("submodule calls nest too deeply"));
        }
        let class = || shown(&m.class.to_string());
        let (file, f) = self.classes.method(m, name).ok_or_else(|| self.err(format!("class `{}` has no method `{}` in code/", class(), shown(name))))?;
        let Some((this, params)) = f.params.split_first().filter(|(_, p)| p.len() == args.len()) else {
            return Err(self.err(format!("{}.{} takes {} arguments, got {}", class(), shown(name), f.params.len().saturating_sub(1), args.len())));
        };
        let mut env = HashMap::new();
        // Names bound to a view of another name (`_1 = torch.slice(y, …)`), for in-place writes.
        let mut views: HashMap<String, String> = HashMap::new();
        env.insert(this.name.clone(), Val::Module(Arc::clone(m), path.to_string()));
        for (p, a) in params.iter().zip(args) {
            env.insert(p.name.clone(), a);
        }
        let prefix = path.replace('.', "_");
        for s in &f.body {
            self.at(file, s.line);
            self.budget = self.budget.checked_sub(1).ok_or_else(|| {
                self.err(format!("inlining submodule calls makes more statements than the {MAX_INLINED_STATEMENTS} allowed (a submodule called from many places at every level?)"))
            })?;
            match &s.kind {
                StmtKind::Assign { targets, value: Some(v), .. } => {
                    let hint = match targets.first() {
                        Some(Expr::Name(n)) if prefix.is_empty() => n.clone(),
                        Some(Expr::Name(n)) => format!("{prefix}_{n}"),
                        _ => prefix.clone(),
                    };
                    self.lower.hint = hint;
                    let val = self.eval(v, &env, depth)?;
                    rebind_in_place(v, &val, &mut env, &views);
                    if let [Expr::Name(t)] = targets.as_slice() {
                        match view_of(v).filter(|base| base != t) {
                            Some(base) => views.insert(t.clone(), base),
                            None => views.remove(t),
                        };
                        env.insert(t.clone(), val);
                    } else {
                        let Val::V(Value::Tuple(items) | Value::List(items)) = val else {
                            return Err(self.err("cannot unpack a non-tuple"));
                        };
                        if items.len() != targets.len() {
                            return Err(self.err(format!("unpacking {} values into {} names", items.len(), targets.len())));
                        }
                        for (t, v) in targets.iter().zip(items) {
                            let Expr::Name(t) = t else { return Err(self.err("assignment to a non-name")) };
                            env.insert(t.clone(), Val::V(v));
                        }
                    }
                }
                StmtKind::Return(v) => {
                    self.lower.hint = if prefix.is_empty() { "output".into() } else { format!("{prefix}_out") };
                    return self.eval(v, &env, depth);
                }
                StmtKind::Expr(v) => {
                    let val = self.eval(v, &env, depth)?;
                    rebind_in_place(v, &val, &mut env, &views);
                }
                StmtKind::Pass | StmtKind::Assign { value: None, .. } => {}
                StmtKind::Unsupported(keyword) => {
                    return Err(self.err(format!("`{keyword}` statement in forward: convert a model made with torch.jit.trace")));
                }
                StmtKind::If { .. } | StmtKind::While { .. } | StmtKind::For { .. } | StmtKind::Def(_) | StmtKind::Class(_) => {
                    return Err(self.err("control flow or nested definitions in forward"));
                }
            }
        }
        Err(self.err(format!("{}.{} does not return", class(), shown(name))))
    }
}

/// The torch calls whose result is a view sharing its first argument's storage, so an in-place
/// op on the result writes that argument too.
const VIEW_CALLS: &[&str] = &["torch.slice", "torch.select", "torch.narrow", "torch.view", "torch.reshape", "torch.expand", "torch.transpose", "torch.permute", "torch.squeeze", "torch.unsqueeze", "torch.diagonal", "torch.as_strided", "torch.t", "torch.flatten", "torch.unflatten"];

/// The name a call's result is a view of (its first argument), for [`VIEW_CALLS`].
fn view_of(e: &Expr) -> Option<String> {
    let Expr::Call { func, args, .. } = e else { return None };
    let Some(Expr::Name(base)) = args.first() else { return None };
    func.dotted().filter(|n| VIEW_CALLS.contains(&n.as_str())).map(|_| base.clone())
}

/// After an in-place call `torch.op_(x, …)`, later reads of `x` see the result (trace semantics),
/// and so do reads of every name holding the same MIL value as `x` (a whole-tensor slice such as
/// `y[:, :]` lowers to `y` itself, so `y[:, :, i] = b` writes `y`). When `x` is a proper view of
/// another name (`views`), that name's new value is not computed: it becomes [`Val::Stale`], an
/// error if read later.
fn rebind_in_place(e: &Expr, result: &Val, env: &mut HashMap<String, Val>, views: &HashMap<String, String>) {
    let Expr::Call { func, args, .. } = e else { return };
    let name = func.dotted().unwrap_or_default();
    let in_place = name.starts_with("torch.") && name.ends_with('_') && !name.ends_with("__");
    if let (true, Some(Expr::Name(x))) = (in_place, args.first()) {
        if let Some(Val::V(old @ Value::Tensor(_))) = env.get(x).cloned() {
            for v in env.values_mut() {
                if matches!(v, Val::V(same) if *same == old) {
                    *v = result.clone();
                }
            }
        }
        // At most one step per recorded view: names reassigned in a cycle end the walk.
        let mut base = views.get(x).cloned();
        for _ in 0..views.len() {
            let Some(b) = base else { break };
            if !matches!(env.get(&b), Some(v) if same_val(v, result)) {
                let why = format!("`{}` is read after `{}` wrote into `{}`, a view (slice) of it; a trace's in-place writes through views are not supported: write the whole tensor (torch.index_put, index_copy, where)", shown(&b), shown(&name), shown(x));
                env.insert(b.clone(), Val::Stale(why));
            }
            base = views.get(&b).cloned();
        }
        env.insert(x.clone(), result.clone());
    }
}

/// Whether two values are the same lowering value.
fn same_val(a: &Val, b: &Val) -> bool {
    matches!((a, b), (Val::V(x), Val::V(y)) if x == y)
}

/// int64 weights (index buffers, position ids) as int32, MIL's index type.
pub(crate) fn to_i32(t: &Tensor) -> Result<Tensor, String> {
    let v = t.to_i64_vec().ok_or("not an integer tensor")?;
    let v: Vec<i32> = v.into_iter().map(|x| i32::try_from(x).map_err(|_| format!("int64 value {x} does not fit int32"))).collect::<Result<_, _>>()?;
    Ok(Tensor::from_i32(t.shape(), &v))
}

/// The package dtype of a user input: int64 → int32; floats → as given when `keep` (the user
/// named the dtype), else fp16 when computing in fp16 and the target allows fp16 I/O (iOS16+, as
/// coremltools does), fp32 otherwise.
fn input_dtype(d: DType, keep: bool, opts: &Options) -> Result<DType, String> {
    Ok(match d {
        DType::I64 | DType::I32 => DType::I32,
        DType::Bool => DType::Bool,
        DType::F16 if keep && opts.opset < Opset::Ios16 => return Err("fp16 inputs need --target iOS16 or later".into()),
        DType::F16 | DType::F32 if keep => d,
        d if d.is_float() => {
            if opts.precision == DType::F16 && opts.opset >= Opset::Ios16 {
                DType::F16
            } else {
                DType::F32
            }
        }
        other => return Err(format!("inputs of dtype {other} are not supported")),
    })
}

/// Converts the archive's root `forward` into a MIL `main` function.
pub fn to_mil(archive: &Archive, inputs: &[InputSpec], opts: &Options) -> Result<Function, Error> {
    lower(archive, inputs, opts).map(|l| l.function)
}

/// A lowered model: the MIL function and what the lowering did to keep fp16 from losing values.
#[derive(Debug)]
pub struct Lowered {
    pub function: Function,
    /// One line per layer rescaled or kept in fp32 for fp16's range (`Lower::precision_notes`).
    pub precision_notes: Vec<String>,
    /// What the user should know about how their inputs were read (a name bound by position).
    pub warnings: Vec<String>,
}

/// [`to_mil`] with the precision notes: what `pipeline::load` calls, so `convert` reports them.
pub fn lower(archive: &Archive, inputs: &[InputSpec], opts: &Options) -> Result<Lowered, Error> {
    inline_root(archive, inputs, opts, MAX_INLINED_STATEMENTS)
}

/// [`to_mil`] with a budget of `statements` inlined statements (tests use a small one).
fn inline_root(archive: &Archive, inputs: &[InputSpec], opts: &Options, statements: usize) -> Result<Lowered, Error> {
    let classes = Classes::parse(archive)?;
    check_supported(archive, &classes)?;
    let bad_inputs = |message: String| Error::Inputs { path: archive.path.clone(), message };
    let (_, root_forward) = classes.method(&archive.root, "forward").ok_or_else(|| bad_inputs(format!("root class `{}` has no forward", shown(&archive.root.class.to_string()))))?;
    let params: Vec<&str> = root_forward.params.iter().skip(1).map(|p| p.name.as_str()).collect();
    if inputs.len() != params.len() {
        return Err(bad_inputs(format!("forward({}) takes {} inputs, {} given", shown(&params.join(", ")), params.len(), inputs.len())));
    }
    let mut ordered: Vec<Option<&InputSpec>> = vec![None; params.len()];
    let mut warnings = Vec::new();
    for (i, spec) in inputs.iter().enumerate() {
        let slot = match &spec.name {
            Some(n) => params.iter().position(|p| p == n).or_else(|| {
                warnings.push(format!(
                    "input `{n}` matches no forward() parameter ({}); bound by position to `{}`",
                    shown(&params.join(", ")),
                    shown(params.get(i).copied().unwrap_or("?"))
                ));
                Some(i)
            }),
            None => Some(i),
        };
        let slot = slot.ok_or_else(|| bad_inputs(format!("no forward() parameter matches input `{}`", spec.name.as_deref().unwrap_or("?"))))?;
        if ordered[slot].replace(spec).is_some() {
            return Err(bad_inputs(format!("two inputs given for forward() parameter `{}`", shown(params.get(slot).copied().unwrap_or_default()))));
        }
    }
    let mut lower = Lower { b: Builder::new(opts.opset), dtype: opts.precision, hint: String::new(), precision_notes: Vec::new(), fresh: Default::default() };
    lower.b.fold_constants(true);
    let mut args = Vec::with_capacity(params.len());
    for (p, spec) in params.iter().zip(ordered) {
        let spec = spec.ok_or_else(|| bad_inputs(format!("no input given for `{p}`")))?;
        let name = spec.name.clone().unwrap_or_else(|| p.to_string());
        let v = input(&mut lower, &name, &spec.ty, spec.keep_dtype, opts).map_err(&bad_inputs)?;
        args.push(Val::V(Value::Tensor(v)));
    }
    let mut inliner = Inliner {
        archive,
        classes: &classes,
        lower,
        weights: HashMap::new(),
        location: String::new(),
        source: None,
        sources: HashMap::new(),
        files: HashMap::new(),
        budget: statements,
    };
    let result = inliner.method(&archive.root, "", "forward", args, 0)?;
    let mut outputs = Vec::new();
    flatten(inliner.value(result)?, &mut outputs).map_err(|m| inliner.err(m))?;
    let Inliner { lower, location, .. } = inliner;
    let mut lowered = finish(lower, outputs, opts).map_err(|message| Error::Lower { path: archive.path.clone(), location, message })?;
    lowered.warnings = warnings;
    Ok(lowered)
}

/// A function input `name` of type `ty` (as given: fp32, int64, …) in the types MIL takes, cast
/// to the compute precision where it is a float of another: the value the graph reads. Shared
/// by both front ends (`torchscript::export` too).
pub(crate) fn input(lower: &mut Lower, name: &str, ty: &TensorType, keep: bool, opts: &Options) -> Result<Var, String> {
    let dtype = input_dtype(ty.dtype, keep, opts)?;
    let v = lower.b.input(name, ty.with_dtype(dtype));
    if !dtype.is_float() || dtype == opts.precision {
        return Ok(v);
    }
    let op = lower.b.op(&ew::CAST, &format!("{name}_cast")).arg("x", &v).konst("dtype", Tensor::string(opts.precision.name()));
    op.build1().map_err(|e| e.to_string())
}

/// The lowered function returning `outputs`: floats Core ML cannot return (or fp16 ones when
/// `opts.fp32_outputs`) cast to fp32, and
/// outputs named `output` (`output_0`, `output_1`, … for several) where the name is free. Shared
/// by both front ends.
pub(crate) fn finish(mut lower: Lower, outputs: Vec<Var>, opts: &Options) -> Result<Lowered, String> {
    let mut named = Vec::with_capacity(outputs.len());
    for v in outputs {
        let ty = lower.ty(&v)?;
        let v = if ty.dtype.is_float() && ty.dtype != DType::F16 && ty.dtype != DType::F32 || (ty.dtype == DType::F16 && (opts.opset < Opset::Ios16 || opts.fp32_outputs)) {
            let op = lower.b.op(&ew::CAST, "output_fp32").arg("x", &v).konst("dtype", Tensor::string("fp32"));
            op.build1().map_err(|e| e.to_string())?
        } else {
            v
        };
        if lower.b.value(&v).is_some() {
            return Err("the model returns a constant; nothing depends on its inputs".into());
        }
        named.push(v);
    }
    let mut f = lower.b.finish(&named);
    // One walk for all outputs (a model may return a tuple of thousands of tensors).
    let mut renames = HashMap::new();
    {
        let defined = f.block.defined_names();
        let inputs: std::collections::HashSet<&str> = f.inputs.iter().map(|x| x.name.as_str()).collect();
        let count = f.block.outputs.len();
        let outputs: std::collections::HashSet<&str> = f.block.outputs.iter().map(String::as_str).collect();
        for (i, old) in f.block.outputs.iter().enumerate() {
            let new = if count == 1 { OUTPUT_NAME.to_string() } else { format!("{OUTPUT_NAME}_{i}") };
            if inputs.contains(new.as_str()) || outputs.contains(new.as_str()) {
                continue;
            }
            // An inner value holding the name (the traced `output` before a cast to fp32) moves
            // aside to a fresh name.
            if defined.contains(new.as_str()) {
                let aside = (1..).map(|k| format!("{new}_inner{k}")).find(|n| !defined.contains(n.as_str())).unwrap_or_default();
                renames.insert(new.clone(), aside);
            }
            renames.entry(old.clone()).or_insert(new);
        }
    }
    f.block.rename_all(&renames);
    Ok(Lowered { function: f, precision_notes: lower.precision_notes, warnings: Vec::new() })
}

/// Name of a model's single output (`output_0`, `output_1`, … when it has several), as the
/// fixtures' `outputs.npz` keys them.
pub const OUTPUT_NAME: &str = "output";

fn flatten(v: Value, out: &mut Vec<Var>) -> Result<(), String> {
    match v {
        Value::Tensor(t) => out.push(t),
        Value::Tuple(items) | Value::List(items) => {
            for i in items {
                flatten(i, out)?;
            }
        }
        other => return Err(format!("the model returns {}, not tensors", other.describe())),
    }
    Ok(())
}

/// Most values one pickled attribute or constant may expand to as a `Value` tree (tuples and
/// lists of numbers in real models hold a few thousand at most).
const MAX_PY_VALUES: usize = 1 << 20;

/// Whether `o`, expanded as a tree (shared values counted each time they appear), has at most
/// `left` nodes; stops counting as soon as it has not, so the walk itself is bounded.
fn fits_expanded(o: &PyObject, left: &mut usize) -> bool {
    let Some(rest) = left.checked_sub(1) else { return false };
    *left = rest;
    match o {
        PyObject::Tuple(items) | PyObject::List(items) => items.iter().all(|i| fits_expanded(i, left)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/torchscript").join(name)
    }

    fn opts() -> Options {
        Options { opset: Opset::Ios16, precision: DType::F16, fp32_outputs: false }
    }

    #[test]
    fn mlp_inlines_to_linear_gelu_linear() {
        let a = super::super::read(&fixture("mlp.pt")).unwrap();
        let f = to_mil(&a, &[InputSpec::new(None, TensorType::new(DType::F32, &[2, 8]))], &opts()).unwrap();
        let kinds: Vec<&str> = f.block.operations.iter().map(|o| o.op_type.as_str()).filter(|k| *k != "const").collect();
        assert_eq!(kinds, ["linear", "gelu", "linear"]);
        assert_eq!(f.inputs[0].ty.tensor().dtype, DType::F16);
    }

    #[test]
    fn ops_record_their_statement_and_the_ane_passes_keep_it() {
        let a = super::super::read(&fixture("mlp.pt")).unwrap();
        let mut f = to_mil(&a, &[InputSpec::new(None, TensorType::new(DType::F32, &[1, 64, 8]))], &opts()).unwrap();
        let call_line = |op: &crate::mil::Operation| {
            let s = op.source.as_ref().unwrap_or_else(|| panic!("{} has no source", op.name));
            let line = a.code[&s.code.file].lines().nth(s.code.line - 1).unwrap();
            assert_eq!(line.trim(), s.text);
            line.to_string()
        };
        for op in f.block.operations.iter().filter(|o| o.op_type != "const") {
            assert!(call_line(op).contains(&format!("torch.{}(", op.op_type)), "{}: {:?}", op.name, op.source);
        }
        crate::passes::run(&mut f, true).unwrap();
        let convs: Vec<_> = f.block.operations.iter().filter(|o| o.op_type == "conv").collect();
        assert_eq!(convs.len(), 2, "both linears became 1x1 convs");
        for op in convs {
            assert!(call_line(op).contains("torch.linear("), "{}: {:?}", op.name, op.source);
        }
    }

    /// The MLP fixture with its root `forward` replaced by `body` (4-space indented
    /// statements); the submodules `fc1`, `act`, `fc2` stay callable.
    fn mlp_with_forward(body: &str) -> Archive {
        let mut a = super::super::read(&fixture("mlp.pt")).unwrap();
        let src = format!(
            "class MLP(Module):\n  __parameters__ = []\n  __buffers__ = []\n  training : bool\n  \
             fc1 : __torch__.torch.nn.modules.linear.Linear\n  \
             act : __torch__.torch.nn.modules.activation.GELU\n  \
             fc2 : __torch__.torch.nn.modules.linear.___torch_mangle_0.Linear\n  \
             def forward(self: __torch__.MLP,\n    x: Tensor) -> Tensor:\n{body}"
        );
        a.code.insert("code/__torch__.py".into(), src);
        a
    }

    fn convert(a: &Archive) -> Result<Function, Error> {
        to_mil(a, &[InputSpec::new(None, TensorType::new(DType::F32, &[2, 8]))], &opts())
    }

    /// Regression (fuzzing campaign, quadratic front end): 8k statements took 48 s in a debug
    /// build because every op named `x` probed `x_1`, `x_2`, … and every statement rescanned its
    /// code file for its line. 200k statements now take about 25 s in a debug build on a loaded
    /// 2-core machine (about 1 s in release); the bound is far below the hours the quadratic
    /// version needs and far above noise.
    #[test]
    fn issue_quadratic_front_end_200k_statements_convert_in_linear_time() {
        const STATEMENTS: usize = 200_000;
        let mut body = "    x = torch.relu(x)\n".repeat(STATEMENTS);
        body += "    return x\n";
        let a = mlp_with_forward(&body);
        let start = std::time::Instant::now();
        let f = convert(&a).unwrap();
        let took = start.elapsed();
        assert_eq!(f.block.operations.iter().filter(|o| o.op_type == "relu").count(), STATEMENTS);
        let last = f.block.operations.last().unwrap();
        assert_eq!(last.source.as_ref().unwrap().code.line, STATEMENTS + 9, "ops still record their own line");
        assert!(took < std::time::Duration::from_secs(150), "{STATEMENTS} statements took {took:?}");
    }

    #[test]
    fn calls_fanning_out_at_every_level_hit_the_inlining_budget_not_the_clock() {
        // forward calls f1 ten times, f1 calls f2 ten times, …: 10^6 inlined calls of f6.
        let mut body = format!("{}    return x\n", "    x = (self).f1(x, )\n".repeat(10));
        for level in 1..6 {
            body += &format!("  def f{level}(self: __torch__.MLP,\n    x: Tensor) -> Tensor:\n{}    return x\n", format!("    x = (self).f{}(x, )\n", level + 1).repeat(10));
        }
        body += "  def f6(self: __torch__.MLP,\n    x: Tensor) -> Tensor:\n    return torch.relu(x)\n";
        let a = mlp_with_forward(&body);
        let spec = [InputSpec::new(None, TensorType::new(DType::F32, &[2, 8]))];
        let e = inline_root(&a, &spec, &opts(), 5000).unwrap_err().to_string();
        assert!(e.contains("inlining submodule calls makes more statements"), "{e}");
        let one_level = mlp_with_forward(&format!("{}    return x\n  def f6(self: __torch__.MLP,\n    x: Tensor) -> Tensor:\n    return torch.relu(x)\n", "    x = (self).f6(x, )\n".repeat(10)));
        assert!(inline_root(&one_level, &spec, &opts(), 5000).is_ok(), "21 statements are within the budget");
    }

    /// Regression (fuzzing campaign, exit 101): sizes and bounds from the code that overflow
    /// an element count, or are not numbers, are one error naming the op and the line.
    #[test]
    fn issue_wrapping_element_counts_are_errors_naming_op_and_line() {
        let cases = [
            ("torch.expand(x, [4294967296, 4294967296, 2, 8])", "aten::expand"),
            ("torch.expand(x, [65536, 65536, 2, 8])", "aten::expand"),
            ("torch.new_ones(x, [4294967296, 4294967296, 4294967296])", "aten::new_ones"),
            ("torch.new_ones(x, [-1])", "aten::new_ones"),
            ("torch.arange(0., 1e400)", "aten::arange"),
            ("torch.arange(0., 1e300, 1e-300)", "aten::arange"),
            ("torch.arange(0., 100000000000)", "aten::arange"),
            ("torch.full_like(torch.expand(x, [9223372036854775807, 2, 8]), 1.)", "aten::expand"),
            ("torch.reshape(x, [4294967296, 4294967296, 0])", "aten::reshape"),
            ("torch.reshape(x, [9223372036854775807, 2])", "aten::reshape"),
            ("torch.slice(x, 1, -9223372036854775807, 9223372036854775807, 9223372036854775807)", "aten::slice"),
            ("torch.scaled_dot_product_attention(x, torch.slice(x, 0, 0, 1), x, None, 0., True)", "aten::scaled_dot_product_attention"),
        ];
        for (call, kind) in cases {
            let a = mlp_with_forward(&format!("    y = {call}\n    return y\n"));
            let e = match convert(&a) {
                Ok(f) => panic!("{call} converted: {:?}", f.block.outputs),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("code/__torch__.py:10") && e.contains(kind), "{call}: {e}");
            assert!(!e.contains('\n') && e.len() < 600, "{call}: {e}");
        }
        // Extreme but meaningful arguments still convert: one part per element, an empty slice.
        let a = mlp_with_forward("    y = torch.chunk(x, 9223372036854775807, 1)\n    return y\n");
        assert_eq!(convert(&a).unwrap().block.outputs.len(), 8);
        let a = mlp_with_forward("    y = torch.slice(x, 1, 9223372036854775807, -9223372036854775807)\n    return torch.relu(y)\n");
        assert!(convert(&a).is_ok());
    }

    #[test]
    fn names_from_the_file_are_shown_bounded() {
        let long = "n".repeat(100_000);
        let a = mlp_with_forward(&format!("    y = torch.{long}(x)\n    return y\n"));
        let e = convert(&a).unwrap_err().to_string();
        assert!(e.contains("aten::nnn") && e.len() < 600, "{}", e.len());
        let many: String = (0..5000).map(|i| format!("    y{i} = torch.op{i}(x)\n")).collect();
        let e = convert(&mlp_with_forward(&format!("{many}    return x\n"))).unwrap_err().to_string();
        assert!(e.contains("5000 unsupported") && e.contains("and 4980 more kinds") && e.len() < 4000, "{}", e.len());
        let e = convert(&mlp_with_forward("    y = -9223372036854775807\n    z = torch.add(y, -1)\n    w = -z\n    return x\n")).unwrap_err().to_string();
        assert!(e.contains("overflows int64") && e.contains(":12"), "{e}");
    }

    #[test]
    fn wrong_input_count_is_an_error() {
        let a = super::super::read(&fixture("mlp.pt")).unwrap();
        let e = to_mil(&a, &[], &opts()).unwrap_err().to_string();
        assert!(e.contains("takes 1 inputs, 0 given"), "{e}");
    }
}
