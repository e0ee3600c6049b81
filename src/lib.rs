//! torch2coreml: PyTorch models in, Core ML `.mlpackage` (ML Program) out, on any OS.
//!
//! Data flow (shared/DESIGN.md): loaders build a [`mil::Program`] (our one IR, Core ML's MIL);
//! [`package::write`] serializes it as an `.mlpackage`; [`package::read`] reads any `.mlpackage`
//! (ours or coremltools') back into the same IR for `inspect`, the interpreter and the linter;
//! [`interp::run`] executes a function (kernels in `mil::ops`, math in [`numeric`]).
//! The `cli` module (binary only) is the only place that prints.

pub mod files;
pub mod staging;
pub mod numeric;
pub mod mil;
pub mod package;
pub mod passes;
pub mod hf;
pub mod torchscript;
pub mod interp;
pub mod lint;
pub mod pipeline;
pub mod validate;
pub mod speech;
#[cfg(feature = "torch")]
pub mod reference;
