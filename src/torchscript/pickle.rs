//! A pickle VM that never executes code, for `data.pkl` and `constants.pkl` of a TorchScript
//! archive (and, later, `torch.save` files: same opcodes, protocols 2–5). GLOBAL and
//! STACK_GLOBAL resolve only through `ALLOWED_GLOBALS` or the `__torch__` class namespace;
//! anything else is [`Error::GlobalNotAllowed`]. Allowed globals are applied by Rust code
//! (tensor rebuilds, `OrderedDict`, type tags), never looked up in Python. Storages come from a
//! `persistent_load` callback given by `torchscript::read`, which maps zip entries.
//!
//! Values live in an arena while the VM runs, so containers that are memoized and then filled
//! (Python's pickler does that) are shared correctly; [`unpickle`] then freezes the arena into
//! an immutable [`PyObject`] tree whose shared parts (tied weights) are shared `Arc`s.
//! Opcode semantics: CPython `Lib/pickletools.py` (3.11); torch's writer:
//! `torch/csrc/jit/serialization/pickler.cpp`; facts: shared/docs/torchscript-format.md §2.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::{Error, Storage, TorchTensor};
use crate::mil::DType;

/// Deepest nesting we freeze. Module trees are shallow (MiniLM: about 40 levels of
/// object/dict/tuple); the bound keeps a crafted pickle from overflowing the Rust stack.
const MAX_DEPTH: usize = 256;
/// Highest pickle protocol defined (Python 3.8+); a later PROTO means opcodes we do not know.
const MAX_PROTOCOL: u8 = 5;
/// Namespace of TorchScript classes (`__torch__.MLP`, `__torch__.torch.nn.modules.linear.Linear`).
/// They only name objects built by NEWOBJ + BUILD; calling one (REDUCE) is refused.
const TORCH_CLASS_NAMESPACE: &str = "__torch__";

/// What the VM does with an allowed global when the pickle calls it (REDUCE or NEWOBJ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Allowed {
    /// `OrderedDict()` → an empty dict (items follow with SETITEMS).
    OrderedDict,
    /// `(storage, storage_offset, size, stride[, requires_grad, backward_hooks, metadata])` → tensor.
    RebuildTensor,
    /// `(tensor, requires_grad, backward_hooks[, state])` → the tensor, with `requires_grad` set.
    RebuildParameter,
    /// Returns its first argument: TorchScript's type tags and typed-list builders.
    FirstArgument,
    /// `torch.device("cpu")` / `torch.device("cuda", 0)` → a device string.
    Device,
    /// A storage class, only valid inside a persistent id; gives the element dtype.
    Storage(DType),
}

/// Every Python global a pickle may name, one per line; all others are refused.
/// `__torch__.*` classes are allowed by namespace instead (see `TORCH_CLASS_NAMESPACE`).
#[rustfmt::skip]
pub(super) const ALLOWED_GLOBALS: &[(&str, &str, Allowed)] = &[
    ("collections", "OrderedDict", Allowed::OrderedDict),
    ("torch._utils", "_rebuild_tensor", Allowed::RebuildTensor),
    ("torch._utils", "_rebuild_tensor_v2", Allowed::RebuildTensor),
    ("torch._utils", "_rebuild_parameter", Allowed::RebuildParameter),
    ("torch._utils", "_rebuild_parameter_with_state", Allowed::RebuildParameter),
    ("torch.jit._pickle", "restore_type_tag", Allowed::FirstArgument),
    ("torch.jit._pickle", "build_intlist", Allowed::FirstArgument),
    ("torch.jit._pickle", "build_doublelist", Allowed::FirstArgument),
    ("torch.jit._pickle", "build_boollist", Allowed::FirstArgument),
    ("torch.jit._pickle", "build_tensorlist", Allowed::FirstArgument),
    ("torch", "device", Allowed::Device),
    ("torch", "FloatStorage", Allowed::Storage(DType::F32)),
    ("torch", "DoubleStorage", Allowed::Storage(DType::F64)),
    ("torch", "HalfStorage", Allowed::Storage(DType::F16)),
    ("torch", "BFloat16Storage", Allowed::Storage(DType::BF16)),
    ("torch", "LongStorage", Allowed::Storage(DType::I64)),
    ("torch", "IntStorage", Allowed::Storage(DType::I32)),
    ("torch", "ShortStorage", Allowed::Storage(DType::I16)),
    ("torch", "CharStorage", Allowed::Storage(DType::I8)),
    ("torch", "ByteStorage", Allowed::Storage(DType::U8)),
    ("torch", "BoolStorage", Allowed::Storage(DType::Bool)),
];

/// The pickle opcodes the VM runs, in pickletools' order; any other byte is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Mark,
    Stop,
    Pop,
    PopMark,
    Dup,
    BinInt,
    BinInt1,
    BinInt2,
    Long1,
    None,
    NewTrue,
    NewFalse,
    BinFloat,
    BinUnicode,
    ShortBinUnicode,
    BinUnicode8,
    EmptyTuple,
    Tuple,
    Tuple1,
    Tuple2,
    Tuple3,
    EmptyList,
    Append,
    Appends,
    List,
    EmptyDict,
    Dict,
    SetItem,
    SetItems,
    BinPut,
    LongBinPut,
    Memoize,
    BinGet,
    LongBinGet,
    Global,
    StackGlobal,
    Reduce,
    NewObj,
    Build,
    BinPersId,
    Proto,
    Frame,
}

/// Opcode bytes, declared once (pickletools.py `opcodes`). A test checks bytes are unique.
const OPCODES: &[(u8, Op)] = &[
    (b'(', Op::Mark),
    (b'.', Op::Stop),
    (b'0', Op::Pop),
    (b'1', Op::PopMark),
    (b'2', Op::Dup),
    (b'J', Op::BinInt),
    (b'K', Op::BinInt1),
    (b'M', Op::BinInt2),
    (0x8a, Op::Long1),
    (b'N', Op::None),
    (0x88, Op::NewTrue),
    (0x89, Op::NewFalse),
    (b'G', Op::BinFloat),
    (b'X', Op::BinUnicode),
    (0x8c, Op::ShortBinUnicode),
    (0x8d, Op::BinUnicode8),
    (b')', Op::EmptyTuple),
    (b't', Op::Tuple),
    (0x85, Op::Tuple1),
    (0x86, Op::Tuple2),
    (0x87, Op::Tuple3),
    (b']', Op::EmptyList),
    (b'a', Op::Append),
    (b'e', Op::Appends),
    (b'l', Op::List),
    (b'}', Op::EmptyDict),
    (b'd', Op::Dict),
    (b's', Op::SetItem),
    (b'u', Op::SetItems),
    (b'q', Op::BinPut),
    (b'r', Op::LongBinPut),
    (0x94, Op::Memoize),
    (b'h', Op::BinGet),
    (b'j', Op::LongBinGet),
    (b'c', Op::Global),
    (0x93, Op::StackGlobal),
    (b'R', Op::Reduce),
    (0x81, Op::NewObj),
    (b'b', Op::Build),
    (b'Q', Op::BinPersId),
    (0x80, Op::Proto),
    (0x95, Op::Frame),
];

/// A Python class name as a pickle spells it: `module` and `name` from GLOBAL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClassName {
    /// Dotted module path, e.g. `__torch__.torch.nn.modules.linear`.
    pub module: String,
    /// Class name, e.g. `Linear`.
    pub name: String,
}

impl fmt::Display for ClassName {
    /// The qualified name TorchScript prints: `__torch__.torch.nn.modules.linear.Linear`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.module, self.name)
    }
}

/// An object built by NEWOBJ of a `__torch__` class, with the state BUILD gave it
/// (`PyObject::None` if never built). For modules the state is a dict of attribute slots.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// The object's TorchScript class.
    pub class: ClassName,
    /// The BUILD state: a `Dict` of attributes for modules.
    pub state: PyObject,
}

/// An unpickled value. Cheap to clone: containers are shared `Arc`s, and an object the pickle
/// references twice (a tied weight) is the same `Arc` in both places.
#[derive(Clone, Debug, PartialEq)]
pub enum PyObject {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Arc<str>),
    Tuple(Arc<[PyObject]>),
    List(Arc<[PyObject]>),
    /// Key/value pairs in insertion order, as written (duplicate keys are kept).
    Dict(Arc<[(PyObject, PyObject)]>),
    Object(Arc<Object>),
    Tensor(Arc<TorchTensor>),
    /// A storage that escaped a tensor rebuild (only in hand-made pickles).
    Storage(Arc<Storage>),
    /// A `torch.device` value, e.g. `cpu` or `cuda:0`.
    Device(Arc<str>),
}

impl PyObject {
    /// The string, for `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyObject::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items, for `Tuple` and `List`.
    pub fn as_items(&self) -> Option<&[PyObject]> {
        match self {
            PyObject::Tuple(items) | PyObject::List(items) => Some(items),
            _ => None,
        }
    }
}

/// The persistent id of a tensor storage: `('storage', <Type>Storage, key, location, numel)`.
/// `torchscript::read`'s `persistent_load` turns it into a mapped [`Storage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageId {
    /// Element type, from the storage class.
    pub dtype: DType,
    /// Entry name under `data/` (or `constants/`): the storage's index in write order.
    pub key: String,
    /// Device tag such as `cpu` or `cuda:0`; the bytes are the same either way.
    pub location: String,
    /// Storage size in elements (not the tensor's element count).
    pub numel: usize,
}

/// Runs the pickle `bytes` (entry `entry` of the archive at `path`, both for messages) and
/// returns the value STOP leaves. `persistent_load` resolves each BINPERSID storage id.
/// Called by `torchscript::read` for `data.pkl` and `constants.pkl`.
pub fn unpickle(
    path: &Path,
    entry: &str,
    bytes: &[u8],
    persistent_load: &mut dyn FnMut(&StorageId) -> Result<Arc<Storage>, Error>,
) -> Result<PyObject, Error> {
    let mut vm = Vm {
        path,
        entry,
        bytes,
        pos: 0,
        op_start: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let top = vm.run(persistent_load)?;
    let mut frozen = vec![Freeze::Todo; vm.nodes.len()];
    vm.freeze(top, 0, &mut frozen)
}

/// Index of a value in the VM's arena.
type Id = usize;

/// A value while the VM runs. Containers hold ids, so filling one after BINPUT is seen by
/// every later BINGET.
enum Node {
    Leaf(PyObject),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Object {
        class: ClassName,
        state: Option<Id>,
    },
    /// A resolved global: an allowed callable or storage class.
    Global(ClassName, Allowed),
    /// A `__torch__` class, waiting for NEWOBJ.
    Class(ClassName),
}

/// Progress of freezing one arena node; `InProgress` seen again means a reference cycle.
#[derive(Clone)]
enum Freeze {
    Todo,
    InProgress,
    Done(PyObject),
}

struct Vm<'a> {
    path: &'a Path,
    entry: &'a str,
    bytes: &'a [u8],
    pos: usize,
    op_start: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    /// Stack heights at each MARK; nothing below the top mark may be popped (pickle's metastack).
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

impl<'a> Vm<'a> {
    fn run(
        &mut self,
        persistent_load: &mut dyn FnMut(&StorageId) -> Result<Arc<Storage>, Error>,
    ) -> Result<Id, Error> {
        loop {
            self.op_start = self.pos;
            let byte = self.take(1)?.first().copied().unwrap_or_default();
            let Some(&(_, op)) = OPCODES.iter().find(|(b, _)| *b == byte) else {
                return Err(self.err(format!("unknown or unsupported opcode 0x{byte:02x}")));
            };
            match op {
                Op::Stop => return self.pop(),
                Op::Mark => self.marks.push(self.stack.len()),
                Op::Pop => {
                    self.pop()?;
                }
                Op::PopMark => {
                    self.pop_mark()?;
                }
                Op::Dup => {
                    let top = self.top()?;
                    self.stack.push(top);
                }
                Op::Proto => {
                    let version = self.u8()?;
                    if version > MAX_PROTOCOL {
                        return Err(self.err(format!(
                            "pickle protocol {version} is newer than {MAX_PROTOCOL}"
                        )));
                    }
                }
                Op::Frame => {
                    self.take(8)?;
                }
                Op::None => self.push_leaf(PyObject::None),
                Op::NewTrue => self.push_leaf(PyObject::Bool(true)),
                Op::NewFalse => self.push_leaf(PyObject::Bool(false)),
                Op::BinInt => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push_leaf(PyObject::Int(i64::from(v)));
                }
                Op::BinInt1 => {
                    let v = self.u8()?;
                    self.push_leaf(PyObject::Int(i64::from(v)));
                }
                Op::BinInt2 => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push_leaf(PyObject::Int(i64::from(v)));
                }
                Op::Long1 => {
                    let n = usize::from(self.u8()?);
                    let digits = self.take(n)?;
                    let v = long_from_le(digits).ok_or_else(|| {
                        self.err(format!("{n}-byte integer does not fit in 64 bits"))
                    })?;
                    self.push_leaf(PyObject::Int(v));
                }
                Op::BinFloat => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push_leaf(PyObject::Float(v));
                }
                Op::BinUnicode => {
                    let n = u32::from_le_bytes(self.array()?);
                    self.push_string(usize::try_from(n).ok())?;
                }
                Op::ShortBinUnicode => {
                    let n = self.u8()?;
                    self.push_string(Some(usize::from(n)))?;
                }
                Op::BinUnicode8 => {
                    let n = u64::from_le_bytes(self.array()?);
                    self.push_string(usize::try_from(n).ok())?;
                }
                Op::EmptyTuple => self.push(Node::Tuple(Vec::new())),
                Op::Tuple => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                Op::Tuple1 => {
                    let items = self.pop_n(1)?;
                    self.push(Node::Tuple(items));
                }
                Op::Tuple2 => {
                    let items = self.pop_n(2)?;
                    self.push(Node::Tuple(items));
                }
                Op::Tuple3 => {
                    let items = self.pop_n(3)?;
                    self.push(Node::Tuple(items));
                }
                Op::EmptyList => self.push(Node::List(Vec::new())),
                Op::List => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                Op::Append => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                Op::Appends => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                Op::EmptyDict => self.push(Node::Dict(Vec::new())),
                Op::Dict => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Node::Dict(pairs));
                }
                Op::SetItem => {
                    let items = self.pop_n(2)?;
                    self.extend_dict(items)?;
                }
                Op::SetItems => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items)?;
                }
                Op::BinPut => {
                    let key = self.u8()?;
                    self.put(u32::from(key))?;
                }
                Op::LongBinPut => {
                    let key = u32::from_le_bytes(self.array()?);
                    self.put(key)?;
                }
                Op::Memoize => {
                    let key = u32::try_from(self.memo.len())
                        .map_err(|_| self.err("memo is full".to_string()))?;
                    self.put(key)?;
                }
                Op::BinGet => {
                    let key = self.u8()?;
                    self.get(u32::from(key))?;
                }
                Op::LongBinGet => {
                    let key = u32::from_le_bytes(self.array()?);
                    self.get(key)?;
                }
                Op::Global => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let node = self.resolve(module, name)?;
                    self.push(node);
                }
                Op::StackGlobal => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.leaf_str(module), self.leaf_str(name))
                    else {
                        return Err(self.err("STACK_GLOBAL needs two strings".to_string()));
                    };
                    let node = self.resolve(module.to_string(), name.to_string())?;
                    self.push(node);
                }
                Op::Reduce => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.call(callable, args)?;
                    self.stack.push(result);
                }
                Op::NewObj => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let result = match self.nodes.get(class) {
                        Some(Node::Class(name)) => {
                            if !matches!(self.nodes.get(args), Some(Node::Tuple(a)) if a.is_empty())
                            {
                                return Err(self.err(format!("NEWOBJ of `{name}` with arguments")));
                            }
                            let class = name.clone();
                            self.push_node(Node::Object { class, state: None })
                        }
                        _ => self.call(class, args)?,
                    };
                    self.stack.push(result);
                }
                Op::Build => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    match self.nodes.get_mut(target) {
                        Some(Node::Object {
                            state: slot @ None, ..
                        }) => *slot = Some(state),
                        Some(Node::Object { class, .. }) => {
                            let class = class.to_string();
                            return Err(self.err(format!("BUILD of `{class}` twice")));
                        }
                        _ => {
                            return Err(self.err(
                                "BUILD of something that is not a TorchScript object".to_string(),
                            ))
                        }
                    }
                }
                Op::BinPersId => {
                    let pid = self.pop()?;
                    let id = self.storage_id(pid)?;
                    let storage = persistent_load(&id)?;
                    self.push_leaf(PyObject::Storage(storage));
                }
            }
        }
    }

    fn err(&self, reason: String) -> Error {
        Error::Pickle {
            path: self.path.to_path_buf(),
            entry: self.entry.to_string(),
            offset: self.op_start,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            let left = self.bytes.len().saturating_sub(self.pos);
            return Err(self.err(format!(
                "needs {n} more bytes, {left} left (truncated pickle?)"
            )));
        };
        let slice = self.bytes.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    /// A newline-terminated line (GLOBAL's operands), without the newline.
    fn line(&mut self) -> Result<String, Error> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err("GLOBAL operand has no newline (truncated pickle?)".to_string()));
        };
        let line = self.take(n + 1)?;
        let text = line.get(..n).unwrap_or_default();
        String::from_utf8(text.to_vec())
            .map_err(|_| self.err("GLOBAL operand is not UTF-8".to_string()))
    }

    fn push_string(&mut self, len: Option<usize>) -> Result<(), Error> {
        let Some(len) = len else {
            return Err(self.err("string length does not fit in memory".to_string()));
        };
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ())
            .map(Arc::<str>::from);
        let text = text.map_err(|()| self.err("string is not UTF-8".to_string()))?;
        self.push_leaf(PyObject::Str(text));
        Ok(())
    }

    fn push_node(&mut self, node: Node) -> Id {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn push(&mut self, node: Node) {
        let id = self.push_node(node);
        self.stack.push(id);
    }

    fn push_leaf(&mut self, value: PyObject) {
        self.push(Node::Leaf(value));
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id, Error> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow".to_string()));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.err("stack underflow".to_string()))
    }

    fn top(&self) -> Result<Id, Error> {
        match self.stack.last() {
            Some(&id) if self.stack.len() > self.floor() => Ok(id),
            _ => Err(self.err("stack underflow".to_string())),
        }
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Id>, Error> {
        let Some(start) = self
            .stack
            .len()
            .checked_sub(n)
            .filter(|&s| s >= self.floor())
        else {
            return Err(self.err("stack underflow".to_string()));
        };
        Ok(self.stack.split_off(start))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, Error> {
        let Some(mark) = self.marks.pop() else {
            return Err(self.err("no MARK to pop to".to_string()));
        };
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn put(&mut self, key: u32) -> Result<(), Error> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn get(&mut self, key: u32) -> Result<(), Error> {
        let Some(&id) = self.memo.get(&key) else {
            return Err(self.err(format!("memo key {key} was never stored")));
        };
        self.stack.push(id);
        Ok(())
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, Error> {
        if items.len() % 2 != 0 {
            return Err(self.err("odd number of items for a dict".to_string()));
        }
        Ok(items
            .chunks_exact(2)
            .map(|kv| {
                (
                    kv.first().copied().unwrap_or_default(),
                    kv.last().copied().unwrap_or_default(),
                )
            })
            .collect())
    }

    fn extend_list(&mut self, items: Vec<Id>) -> Result<(), Error> {
        let target = self.top()?;
        match self.nodes.get_mut(target) {
            Some(Node::List(list)) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(self.err("APPEND to something that is not a list".to_string())),
        }
    }

    fn extend_dict(&mut self, items: Vec<Id>) -> Result<(), Error> {
        let pairs = self.pairs(items)?;
        let target = self.top()?;
        match self.nodes.get_mut(target) {
            Some(Node::Dict(dict)) => {
                dict.extend(pairs);
                Ok(())
            }
            _ => Err(self.err("SETITEM on something that is not a dict".to_string())),
        }
    }

    fn leaf_str(&self, id: Id) -> Option<&str> {
        match self.nodes.get(id) {
            Some(Node::Leaf(PyObject::Str(s))) => Some(s),
            _ => None,
        }
    }

    fn leaf_int(&self, id: Id) -> Option<i64> {
        match self.nodes.get(id) {
            Some(Node::Leaf(PyObject::Int(v))) => Some(*v),
            _ => None,
        }
    }

    fn leaf_bool(&self, id: Id) -> Option<bool> {
        match self.nodes.get(id) {
            Some(Node::Leaf(PyObject::Bool(v))) => Some(*v),
            _ => None,
        }
    }

    fn tuple_items(&self, id: Id) -> Option<&[Id]> {
        match self.nodes.get(id) {
            Some(Node::Tuple(items)) => Some(items),
            _ => None,
        }
    }

    /// A tuple of non-negative ints (tensor sizes and strides).
    fn dims(&self, id: Id, what: &str) -> Result<Vec<usize>, Error> {
        let items = self
            .tuple_items(id)
            .ok_or_else(|| self.err(format!("tensor {what} is not a tuple")))?;
        items
            .iter()
            .map(|&i| {
                self.leaf_int(i)
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| {
                        self.err(format!(
                            "tensor {what} holds something other than a non-negative int"
                        ))
                    })
            })
            .collect()
    }

    /// GLOBAL's lookup: an `ALLOWED_GLOBALS` entry, or a well-formed `__torch__` class name.
    fn resolve(&self, module: String, name: String) -> Result<Node, Error> {
        let allowed = ALLOWED_GLOBALS
            .iter()
            .find(|(m, n, _)| *m == module && *n == name);
        if let Some(&(_, _, kind)) = allowed {
            return Ok(Node::Global(ClassName { module, name }, kind));
        }
        let in_namespace = module == TORCH_CLASS_NAMESPACE
            || module
                .strip_prefix(TORCH_CLASS_NAMESPACE)
                .is_some_and(|rest| rest.starts_with('.'));
        if in_namespace && module.split('.').chain([name.as_str()]).all(is_identifier) {
            return Ok(Node::Class(ClassName { module, name }));
        }
        Err(Error::GlobalNotAllowed {
            path: self.path.to_path_buf(),
            module,
            name,
        })
    }

    /// REDUCE (and NEWOBJ of a non-`__torch__` global): applies an allowed global to `args`.
    fn call(&mut self, callable: Id, args: Id) -> Result<Id, Error> {
        let (class, kind) = match self.nodes.get(callable) {
            Some(Node::Global(class, kind)) => (class.clone(), *kind),
            Some(Node::Class(class)) => {
                let ClassName { module, name } = class.clone();
                return Err(Error::GlobalNotAllowed {
                    path: self.path.to_path_buf(),
                    module,
                    name,
                });
            }
            _ => {
                return Err(
                    self.err("REDUCE of something that is not a class or function".to_string())
                )
            }
        };
        let args = self
            .tuple_items(args)
            .ok_or_else(|| self.err(format!("arguments of `{class}` are not a tuple")))?
            .to_vec();
        match kind {
            Allowed::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.err("OrderedDict with arguments".to_string()));
                }
                Ok(self.push_node(Node::Dict(Vec::new())))
            }
            Allowed::FirstArgument => args
                .first()
                .copied()
                .ok_or_else(|| self.err(format!("`{class}` without arguments"))),
            Allowed::Device => {
                let device = match args.as_slice() {
                    [kind] => self.leaf_str(*kind).map(str::to_string),
                    [kind, index] => match (self.leaf_str(*kind), self.leaf_int(*index)) {
                        (Some(kind), Some(index)) => Some(format!("{kind}:{index}")),
                        _ => None,
                    },
                    _ => None,
                };
                let device = device.ok_or_else(|| {
                    self.err("torch.device with unexpected arguments".to_string())
                })?;
                Ok(self.push_node(Node::Leaf(PyObject::Device(device.into()))))
            }
            Allowed::RebuildTensor => {
                let [storage, offset, size, stride, rest @ ..] = args.as_slice() else {
                    return Err(self.err(format!("`{class}` needs at least 4 arguments")));
                };
                let storage = match self.nodes.get(*storage) {
                    Some(Node::Leaf(PyObject::Storage(s))) => s.clone(),
                    _ => return Err(self.err("tensor rebuild without a storage".to_string())),
                };
                let offset = self.leaf_int(*offset).and_then(|v| usize::try_from(v).ok());
                let offset = offset.ok_or_else(|| {
                    self.err("tensor storage offset is not a non-negative int".to_string())
                })?;
                let shape = self.dims(*size, "size")?;
                let strides = self.dims(*stride, "stride")?;
                let requires_grad = rest
                    .first()
                    .and_then(|&r| self.leaf_bool(r))
                    .unwrap_or(false);
                let tensor = TorchTensor::new(storage, offset, shape, strides, requires_grad)?;
                Ok(self.push_node(Node::Leaf(PyObject::Tensor(Arc::new(tensor)))))
            }
            Allowed::RebuildParameter => {
                let [data, requires_grad, ..] = args.as_slice() else {
                    return Err(self.err(format!("`{class}` needs at least 2 arguments")));
                };
                let tensor = match self.nodes.get(*data) {
                    Some(Node::Leaf(PyObject::Tensor(t))) => t.clone(),
                    _ => {
                        return Err(self.err(format!("`{class}` of something that is not a tensor")))
                    }
                };
                let requires_grad = self.leaf_bool(*requires_grad).unwrap_or(false);
                let tensor = TorchTensor {
                    requires_grad,
                    ..TorchTensor::clone(&tensor)
                };
                Ok(self.push_node(Node::Leaf(PyObject::Tensor(Arc::new(tensor)))))
            }
            Allowed::Storage(_) => Err(self.err(format!(
                "storage class `{class}` called outside a persistent id"
            ))),
        }
    }

    /// BINPERSID's id: `('storage', <Type>Storage, key, location, numel[, view metadata])`.
    fn storage_id(&self, pid: Id) -> Result<StorageId, Error> {
        let bad = |what: &str| self.err(format!("persistent id: {what}"));
        let items = self.tuple_items(pid).ok_or_else(|| bad("not a tuple"))?;
        let [tag, class, key, location, numel, ..] = items else {
            return Err(bad("needs 5 items"));
        };
        if items.len() > 6 || self.leaf_str(*tag) != Some("storage") {
            return Err(bad("not a ('storage', type, key, location, numel) tuple"));
        }
        let dtype = match self.nodes.get(*class) {
            Some(Node::Global(_, Allowed::Storage(dtype))) => *dtype,
            _ => return Err(bad("second item is not a storage class")),
        };
        let key = self
            .leaf_str(*key)
            .ok_or_else(|| bad("key is not a string"))?
            .to_string();
        let location = self
            .leaf_str(*location)
            .ok_or_else(|| bad("location is not a string"))?
            .to_string();
        let numel = self
            .leaf_int(*numel)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| bad("numel is not a non-negative int"))?;
        Ok(StorageId {
            dtype,
            key,
            location,
            numel,
        })
    }

    /// Turns arena node `id` into an immutable value, sharing nodes reached twice and
    /// refusing cycles and nesting beyond `MAX_DEPTH`.
    fn freeze(&self, id: Id, depth: usize, frozen: &mut [Freeze]) -> Result<PyObject, Error> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        match frozen.get(id) {
            Some(Freeze::Done(value)) => return Ok(value.clone()),
            Some(Freeze::InProgress) => {
                return Err(self.err("the pickle holds a reference cycle".to_string()))
            }
            Some(Freeze::Todo) => {}
            None => return Err(self.err(format!("dangling value {id}"))),
        }
        if let Some(slot) = frozen.get_mut(id) {
            *slot = Freeze::InProgress;
        }
        let items = |ids: &[Id], frozen: &mut [Freeze]| -> Result<Vec<PyObject>, Error> {
            ids.iter()
                .map(|&i| self.freeze(i, depth + 1, frozen))
                .collect()
        };
        let value = match self.nodes.get(id) {
            Some(Node::Leaf(v)) => v.clone(),
            Some(Node::Tuple(ids)) => PyObject::Tuple(items(ids, frozen)?.into()),
            Some(Node::List(ids)) => PyObject::List(items(ids, frozen)?.into()),
            Some(Node::Dict(pairs)) => {
                let mut out = Vec::with_capacity(pairs.len());
                for &(k, v) in pairs {
                    out.push((
                        self.freeze(k, depth + 1, frozen)?,
                        self.freeze(v, depth + 1, frozen)?,
                    ));
                }
                PyObject::Dict(out.into())
            }
            Some(Node::Object { class, state }) => {
                let state = match state {
                    Some(s) => self.freeze(*s, depth + 1, frozen)?,
                    None => PyObject::None,
                };
                PyObject::Object(Arc::new(Object {
                    class: class.clone(),
                    state,
                }))
            }
            Some(Node::Global(class, _) | Node::Class(class)) => {
                return Err(self.err(format!("class `{class}` used as a value")));
            }
            None => return Err(self.err(format!("dangling value {id}"))),
        };
        if let Some(slot) = frozen.get_mut(id) {
            *slot = Freeze::Done(value.clone());
        }
        Ok(value)
    }
}

/// A little-endian two's-complement integer of up to 8 bytes (LONG1's payload).
fn long_from_le(digits: &[u8]) -> Option<i64> {
    if digits.len() > 8 {
        return None;
    }
    let negative = digits.last().is_some_and(|&b| b & 0x80 != 0);
    let mut bytes = [if negative { 0xff } else { 0 }; 8];
    bytes.get_mut(..digits.len())?.copy_from_slice(digits);
    Some(i64::from_le_bytes(bytes))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_storages(id: &StorageId) -> Result<Arc<Storage>, Error> {
        panic!("unexpected persistent id {id:?}")
    }

    fn run(bytes: &[u8]) -> Result<PyObject, Error> {
        unpickle(Path::new("t.pt"), "t/data.pkl", bytes, &mut no_storages)
    }

    fn s(v: &str) -> PyObject {
        PyObject::Str(v.into())
    }

    #[test]
    fn opcode_bytes_are_unique() {
        let mut bytes: Vec<u8> = OPCODES.iter().map(|(b, _)| *b).collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), OPCODES.len());
        let mut ops: Vec<String> = OPCODES.iter().map(|(_, op)| format!("{op:?}")).collect();
        ops.sort();
        ops.dedup();
        assert_eq!(ops.len(), OPCODES.len());
    }

    #[test]
    fn allowed_globals_are_unique() {
        let mut names: Vec<(&str, &str)> =
            ALLOWED_GLOBALS.iter().map(|(m, n, _)| (*m, *n)).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALLOWED_GLOBALS.len());
    }

    #[test]
    fn scalars_containers_and_memo() {
        // {'a': [1, -2, 300, 70000, 2**40, 0.5], 'b': ('x', None, True, False)} as protocol 2 bytes.
        let mut p = b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01J\xfe\xff\xff\xffM,\x01J\x70\x11\x01\x00".to_vec();
        p.extend(b"\x8a\x06\x00\x00\x00\x00\x00\x01G?\xe0\x00\x00\x00\x00\x00\x00e");
        p.extend(b"X\x01\x00\x00\x00b(X\x01\x00\x00\x00xN\x88\x89tu.");
        let v = run(&p).unwrap();
        let list = PyObject::List(
            vec![
                PyObject::Int(1),
                PyObject::Int(-2),
                PyObject::Int(300),
                PyObject::Int(70000),
                PyObject::Int(1 << 40),
                PyObject::Float(0.5),
            ]
            .into(),
        );
        let tuple = PyObject::Tuple(
            vec![
                s("x"),
                PyObject::None,
                PyObject::Bool(true),
                PyObject::Bool(false),
            ]
            .into(),
        );
        assert_eq!(
            v,
            PyObject::Dict(vec![(s("a"), list), (s("b"), tuple)].into())
        );
    }

    #[test]
    fn pythons_own_pickler_output_reads_back_at_protocols_2_and_4() {
        // pickle.dumps(v, protocol=p) in CPython 3.11, for
        // v = {'a': [1, 2.5, None, True, 'xyz'], 'b': ('y', -300, 2**40),
        //      'c': OrderedDict([('k', {})])}; v['d'] = v['a']
        let p2 = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88X\x03\x00\x00\x00xyzq\x03eX\x01\x00\x00\x00bq\x04X\x01\x00\x00\x00yq\x05J\xd4\xfe\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x87q\x06X\x01\x00\x00\x00cq\x07ccollections\nOrderedDict\nq\x08)Rq\tX\x01\x00\x00\x00kq\n}q\x0bsX\x01\x00\x00\x00dq\x0ch\x02u.";
        let p4 = b"\x80\x04\x95i\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88\x8c\x03xyz\x94e\x8c\x01b\x94\x8c\x01y\x94J\xd4\xfe\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x87\x94\x8c\x01c\x94\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94\x8c\x01k\x94}\x94s\x8c\x01d\x94h\x02u.";
        let list = PyObject::List(
            vec![
                PyObject::Int(1),
                PyObject::Float(2.5),
                PyObject::None,
                PyObject::Bool(true),
                s("xyz"),
            ]
            .into(),
        );
        let tuple =
            PyObject::Tuple(vec![s("y"), PyObject::Int(-300), PyObject::Int(1 << 40)].into());
        let ordered = PyObject::Dict(vec![(s("k"), PyObject::Dict(Vec::new().into()))].into());
        let want = PyObject::Dict(
            vec![
                (s("a"), list.clone()),
                (s("b"), tuple),
                (s("c"), ordered),
                (s("d"), list),
            ]
            .into(),
        );
        assert_eq!(run(p2).unwrap(), want);
        assert_eq!(run(p4).unwrap(), want);
    }

    #[test]
    fn a_container_filled_after_binput_is_shared_filled() {
        // d = {}; memo[0] = d; d['k'] = 1; return (d, memo[0]) — Python's pickler writes this shape.
        let v = run(b"\x80\x02}q\x00X\x01\x00\x00\x00kK\x01sh\x00\x86.").unwrap();
        let PyObject::Tuple(items) = v else {
            panic!("{v:?}")
        };
        let d = PyObject::Dict(vec![(s("k"), PyObject::Int(1))].into());
        assert_eq!(items.as_ref(), [d.clone(), d]);
        let (PyObject::Dict(a), PyObject::Dict(b)) = (&items[0], &items[1]) else {
            unreachable!()
        };
        assert!(
            Arc::ptr_eq(a, b),
            "one object referenced twice stays one Arc"
        );
    }

    #[test]
    fn torch_classes_are_objects_with_their_state() {
        let v =
            run(b"\x80\x02c__torch__.a.b\nNet\n)\x81}(X\x08\x00\x00\x00training\x89ub.").unwrap();
        let PyObject::Object(obj) = v else {
            panic!("{v:?}")
        };
        assert_eq!(obj.class.to_string(), "__torch__.a.b.Net");
        assert_eq!(
            obj.state,
            PyObject::Dict(vec![(s("training"), PyObject::Bool(false))].into())
        );
    }

    #[test]
    fn ordered_dict_type_tags_and_devices_are_applied() {
        let v = run(b"\x80\x02ccollections\nOrderedDict\n)R.").unwrap();
        assert_eq!(v, PyObject::Dict(Vec::new().into()));
        let v =
            run(b"\x80\x02ctorch.jit._pickle\nrestore_type_tag\nK\x07X\x03\x00\x00\x00int\x86R.")
                .unwrap();
        assert_eq!(v, PyObject::Int(7));
        let v = run(b"\x80\x02ctorch\ndevice\nX\x04\x00\x00\x00cudaK\x01\x86R.").unwrap();
        assert_eq!(v, PyObject::Device("cuda:1".into()));
    }

    #[test]
    fn os_system_is_refused_by_global_and_stack_global() {
        let e = run(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.").unwrap_err();
        assert!(
            matches!(&e, Error::GlobalNotAllowed { module, name, .. } if module == "os" && name == "system"),
            "{e}"
        );
        assert!(e.to_string().contains("`os.system`"), "{e}");
        let e =
            run(b"\x80\x04\x8c\x02os\x8c\x06system\x93X\x04\x00\x00\x00echo\x85R.").unwrap_err();
        assert!(matches!(e, Error::GlobalNotAllowed { .. }), "{e}");
    }

    #[test]
    fn torch_classes_cannot_be_called_or_spoofed() {
        let e = run(b"\x80\x02c__torch__\nNet\n)R.").unwrap_err();
        assert!(
            matches!(e, Error::GlobalNotAllowed { .. }),
            "REDUCE of a __torch__ class: {e}"
        );
        for global in [
            &b"c__torch__x\nNet\n"[..],
            b"c__torch__.a b\nNet\n",
            b"c__torch__\nos.system\n",
        ] {
            let mut p = b"\x80\x02".to_vec();
            p.extend(global);
            p.extend(b")\x81.");
            assert!(
                matches!(run(&p), Err(Error::GlobalNotAllowed { .. })),
                "{}",
                String::from_utf8_lossy(global)
            );
        }
    }

    #[test]
    fn quantized_tensors_are_refused_with_a_hint() {
        let e = run(b"\x80\x02ctorch._utils\n_rebuild_qtensor\n.").unwrap_err();
        assert!(e.to_string().contains("quantized"), "{e}");
    }

    #[test]
    fn cycles_deep_nesting_and_bad_bytes_are_errors() {
        // l = []; l.append(l)
        assert!(matches!(
            run(b"\x80\x02]q\x00h\x00a."),
            Err(Error::Pickle { .. })
        ));
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 100_000));
        deep.extend(std::iter::repeat_n(b'a', 99_999));
        deep.push(b'.');
        assert!(matches!(run(&deep), Err(Error::Pickle { .. })));
        assert!(matches!(run(b"\x80\x02\xff."), Err(Error::Pickle { .. })));
        assert!(
            matches!(run(b"\x80\x02(0."), Err(Error::Pickle { .. })),
            "POP below a MARK"
        );
        assert!(
            matches!(run(b"\x80\x02h\x05."), Err(Error::Pickle { .. })),
            "missing memo key"
        );
        assert!(
            matches!(run(b"\x80\x06N."), Err(Error::Pickle { .. })),
            "unknown protocol"
        );
    }

    #[test]
    fn every_prefix_is_an_error_not_a_panic() {
        let p = b"\x80\x02c__torch__\nNet\nq\x00)\x81}q\x01(X\x01\x00\x00\x00a]q\x02(K\x01\x8a\x02\x00\x80G?\xe0\x00\x00\x00\x00\x00\x00eX\x01\x00\x00\x00bh\x02ub.";
        assert!(run(p).is_ok());
        for cut in 0..p.len() {
            assert!(run(&p[..cut]).is_err(), "prefix of {cut} bytes");
        }
    }
}
