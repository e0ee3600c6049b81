//! Reads the `code/**.py.debug_pkl` entries of a TorchScript archive: for one serialized code
//! file, the table from byte offsets in that file to source ranges of the original Python (the
//! model's own `modeling_bert.py`, not the printed `code/__torch__/…`). Best-effort: any file
//! that does not have the shape below gives no table, never an error, so a broken debug_pkl only
//! costs the original-line notes in diagnostics. Runs through the same allow-list pickle VM as
//! `data.pkl` (`pickle::unpickle`), which never executes code. Called by `torchscript::graph`
//! for the `mil::Source` of each lowered statement.
//!
//! Format (torch `csrc/jit/serialization/source_range_serialization.cpp`, `SourceRangePickler`):
//! the pickle is `(FORMAT_WITH_STRING_TABLE, (text, …), (record, …))` in torch ≥ 1.12, or just
//! `(record, …)` before. A record is `(byte_offset, (source, start, end), tag)`. A source is
//! `(line_text_indices: List[int], filename_index, starting_line_no)` with the string table,
//! `(text, filename, starting_line_no)` without. For a traced model the source text is the Python
//! stack at trace time, one `file(line): function` frame per line, innermost first
//! (`python_tracer.cpp`, `getPythonInterpreterSourceRange`), and the filename and starting line
//! are those of the innermost frame.

use std::ops::Range;
use std::path::Path;

use super::pickle::{self, PyObject};
use super::Error;
use crate::mil::SourceLine;

/// First item of a debug_pkl written with a string table (torch `kFormatWithStringTable`).
const FORMAT_WITH_STRING_TABLE: &str = "FORMAT_WITH_STRING_TABLE";
/// What the frames of a traced stack end with when they are inside `nn.Module.__call__`: every
/// module call passes through it, so it locates torch's own package in the stack.
const TORCH_MODULE_FILE: &str = "torch/nn/modules/module.py";

/// The source-range table of one serialized code file, sorted by byte offset. Each record holds
/// from its offset up to the next record's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceRanges {
    records: Vec<(usize, Option<SourceLine>)>,
}

impl SourceRanges {
    /// Parses the debug_pkl `bytes` (entry `entry` of the archive at `path`). `None` when the
    /// pickle is refused or corrupt, or its shape is not one torch writes.
    pub fn parse(path: &Path, entry: &str, bytes: &[u8]) -> Option<SourceRanges> {
        let mut no_storages = |_: &pickle::StorageId| -> Result<_, Error> {
            Err(Error::Corrupt { path: path.to_path_buf(), reason: format!("`{entry}` references a tensor storage") })
        };
        let top = pickle::unpickle(path, entry, bytes, &mut no_storages).ok()?;
        let items = top.as_items()?;
        let (table, records) = match items {
            [tag, table, records] if tag.as_str() == Some(FORMAT_WITH_STRING_TABLE) => {
                let table: Vec<&str> = table.as_items()?.iter().map(PyObject::as_str).collect::<Option<_>>()?;
                (Some(table), records.as_items()?)
            }
            records => (None, records),
        };
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let [offset, range, ..] = record.as_items()? else { return None };
            let [source, start, _end] = range.as_items()? else { return None };
            out.push((usize::try_from(int(offset)?).ok()?, original(source, int(start)?, table.as_deref())));
        }
        out.sort_by_key(|(offset, _)| *offset);
        Some(SourceRanges { records: out })
    }

    /// The original line behind the code line that spans bytes `line` of the code file these
    /// ranges describe (a [`Lines::range`]): the first record inside the line that names a
    /// file, else the record covering the line's start. `None` when neither names one (shape
    /// arithmetic torch added has none). Two binary searches: no scan of the file or table.
    pub fn original(&self, line: Range<usize>) -> Option<&SourceLine> {
        let first = self.records.partition_point(|(offset, _)| *offset < line.start);
        let inside = self.records.get(first..)?.iter().take_while(|(offset, _)| *offset < line.end);
        inside.filter_map(|(_, l)| l.as_ref()).next().or_else(|| {
            let covering = self.records.partition_point(|(offset, _)| *offset <= line.start).checked_sub(1)?;
            self.records.get(covering)?.1.as_ref()
        })
    }
}

/// Where each line of one code file starts, so the text and byte range of a statement's line
/// are found without rescanning the file (a model has one statement per line, so a scan per
/// statement would make lowering quadratic). Built once per code file by `torchscript::graph`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lines {
    /// Byte offset of the first byte of each line, in order.
    starts: Vec<usize>,
    /// Length of the file in bytes: the end of the last line.
    len: usize,
}

impl Lines {
    /// Indexes the lines of `code` as `str::split_inclusive('\n')` cuts them.
    pub fn new(code: &str) -> Lines {
        let mut starts = Vec::new();
        let mut start = 0;
        for piece in code.split_inclusive('\n') {
            starts.push(start);
            start += piece.len();
        }
        Lines { starts, len: code.len() }
    }

    /// The bytes of line `line` (1-based), its line break included; `None` past the end.
    pub fn range(&self, line: usize) -> Option<Range<usize>> {
        let index = line.checked_sub(1)?;
        let start = *self.starts.get(index)?;
        let end = self.starts.get(index + 1).copied().unwrap_or(self.len);
        Some(start..end)
    }

    /// The text of line `line` (1-based) of `code` (the file this index was built from),
    /// without surrounding white space; empty past the end.
    pub fn text<'a>(&self, code: &'a str, line: usize) -> &'a str {
        self.range(line).and_then(|r| code.get(r)).unwrap_or_default().trim()
    }
}

fn int(o: &PyObject) -> Option<i64> {
    match o {
        PyObject::Int(i) => Some(*i),
        _ => None,
    }
}

/// The original line of a serialized source at byte offset `start`: for a traced stack the
/// innermost frame outside torch (`torch/nn/modules/linear.py:134` is true of every `Linear`; the
/// caller's line says which one), else the source's file at `starting_line_no` plus the lines
/// before `start`. `None` for the empty source torch writes for ranges it made up.
fn original(source: &PyObject, start: i64, table: Option<&[&str]>) -> Option<SourceLine> {
    let [text, filename, first_line] = source.as_items()? else { return None };
    let (text, file) = match table {
        Some(table) => {
            let lines = text.as_items()?;
            let text: String = lines.iter().map(|i| table.get(usize::try_from(int(i)?).ok()?).copied()).collect::<Option<_>>()?;
            (text, table.get(usize::try_from(int(filename)?).ok()?).copied()?.to_string())
        }
        None => (text.as_str()?.to_string(), filename.as_str()?.to_string()),
    };
    if file.is_empty() {
        return None;
    }
    if let Some(frame) = caller_outside_torch(&text) {
        return Some(frame);
    }
    let before = text.as_bytes().get(..usize::try_from(start).ok()?)?.iter().filter(|b| **b == b'\n').count();
    let line = usize::try_from(int(first_line)?).ok()?.checked_add(before)?;
    Some(SourceLine { file, line })
}

/// In a traced stack (`file(line): function` per line, innermost first) whose innermost frame is
/// inside torch, the innermost frame that is not. Torch's package is the folder of the frame
/// ending in [`TORCH_MODULE_FILE`]; without one there is no stack to walk.
fn caller_outside_torch(text: &str) -> Option<SourceLine> {
    let frames: Vec<SourceLine> = text
        .lines()
        .map(|l| {
            let (location, _function) = l.rsplit_once("): ")?;
            let (file, line) = location.rsplit_once('(')?;
            Some(SourceLine { file: file.to_string(), line: line.parse().ok()? })
        })
        .collect::<Option<_>>()?;
    let torch = frames.iter().find_map(|f| f.file.strip_suffix(TORCH_MODULE_FILE))?.to_string();
    let inside = |f: &SourceLine| f.file.strip_prefix(torch.as_str()).is_some_and(|rest| rest.starts_with("torch/"));
    if !inside(frames.first()?) {
        return None;
    }
    frames.into_iter().find(|f| !inside(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(file: &str, line: usize) -> SourceLine {
        SourceLine { file: file.into(), line }
    }

    #[test]
    fn a_stack_inside_torch_names_the_callers_line() {
        let stack = "/venv/torch/nn/modules/linear.py(134): forward\n\
                     /venv/torch/nn/modules/module.py(1768): _slow_forward\n\
                     /src/model.py(35): forward\n\
                     /venv/torch/jit/_trace.py(1216): trace_module\n";
        assert_eq!(caller_outside_torch(stack), Some(line("/src/model.py", 35)));
        let own = "/src/model.py(12): forward\n/venv/torch/nn/modules/module.py(1768): _slow_forward\n";
        assert_eq!(caller_outside_torch(own), None, "the innermost frame is already the model's");
        assert_eq!(caller_outside_torch("def forward(self, x):\n  return x\n"), None, "scripted source, not a stack");
    }

    #[test]
    fn lines_map_to_the_first_named_record_inside_them() {
        // Lines start at bytes 0, 6, 17 and 24.
        let code = "a = 1\n  b = f(a)\n  c = b\n  d = c\n";
        let lines = Lines::new(code);
        let ranges = SourceRanges { records: vec![(0, None), (14, Some(line("m.py", 7))), (24, None)] };
        let original = |n: usize| lines.range(n).and_then(|r| ranges.original(r));
        assert_eq!(original(1), None);
        assert_eq!(original(2), Some(&line("m.py", 7)), "the record at 14 is inside line 2");
        assert_eq!(original(3), Some(&line("m.py", 7)), "no record inside: the one covering its start");
        assert_eq!(original(4), None, "the record at its first byte names none");
        assert_eq!(original(0), None);
        assert_eq!(original(9), None);
    }

    #[test]
    fn lines_index_like_str_lines() {
        for code in ["", "a", "a\n", "a\r\n  b \n\nc", "\n\n", "x = 1\n  y = é\n"] {
            let lines = Lines::new(code);
            let want: Vec<&str> = code.lines().map(str::trim).collect();
            let got: Vec<&str> = (1..=want.len()).map(|n| lines.text(code, n)).collect();
            assert_eq!(got, want, "{code:?}");
            assert_eq!(lines.range(want.len() + 1), None, "{code:?}");
            assert_eq!(lines.text(code, 0), "");
        }
    }

    #[test]
    fn junk_is_no_table_not_an_error() {
        let p = Path::new("m.pt");
        for bytes in [&b""[..], b"\x80\x02N.", b"\x80\x02K\x01K\x02\x86.", b"\x80\x02cos\nsystem\n.", b"\x80\x02(K\x01"] {
            assert_eq!(SourceRanges::parse(p, "m/code/__torch__.py.debug_pkl", bytes), None, "{bytes:?}");
        }
    }
}
