//! The kind of an epilogue, without its tensors: plain data that the error type, the step
//! builder and the kernels' specializations name, kept apart from `Epilogue` (which holds
//! tensors) so that the low layers need not know what a tensor is.

/// An epilogue without its tensors: what the kernels are specialized for, and what a forward's
/// saved statistics remember so that its backward can be checked against it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EpilogueKind {
    /// y = bn(x).
    #[default]
    None,
    /// y = relu(bn(x)).
    Relu,
    /// y = relu(bn(x) + z).
    AddRelu,
}

impl EpilogueKind {
    /// Its name in messages and reports: "none", "relu", "add-relu".
    pub fn name(self) -> &'static str {
        match self {
            EpilogueKind::None => "none",
            EpilogueKind::Relu => "relu",
            EpilogueKind::AddRelu => "add-relu",
        }
    }
}

impl std::fmt::Display for EpilogueKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
