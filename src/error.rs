//! The crate's error type: every refused call and every GPU failure the crate can catch.

use crate::dtype::DType;
use crate::epilogue::kind::EpilogueKind;
use crate::layout::{Layout, ShapeError};

/// Everything that can go wrong in this crate. A call that returns an error changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum BatchNormError {
    /// No wgpu adapter matched the request.
    #[error(
        "no GPU adapter found{filter}. Install a Vulkan, Metal, DX12 or GL driver; on a machine \
         without a GPU install Mesa's software drivers (Debian: `mesa-vulkan-drivers libegl-mesa0 \
         libgl1-mesa-dri libvulkan1 libegl1`, or run `.ci/install-gpu-drivers.sh`), and check \
         WGPU_BACKEND / WGPU_ADAPTER_NAME"
    )]
    NoAdapter {
        /// The backend and name filters in force, as text (empty when none).
        filter: String,
    },

    /// The adapter refused to create a device with the limits and features the kernels need.
    #[error("the adapter '{adapter}' could not create a device: {reason}")]
    DeviceRequest {
        /// Adapter name.
        adapter: String,
        /// wgpu's explanation.
        reason: String,
    },

    /// A caller's device has a smaller limit than the kernels need.
    #[error(
        "the device's {limit} is {actual} but the batch-norm kernels need {required}; request \
         at least WebGPU's default limits (wgpu::Limits::default()) when creating the device"
    )]
    InsufficientLimit {
        /// The wgpu limit's name.
        limit: &'static str,
        /// What the kernels need.
        required: u64,
        /// What the device has.
        actual: u64,
    },

    /// The data length does not match the shape.
    #[error("shape {shape:?} holds {expected} elements but the data has {actual}")]
    LengthMismatch {
        /// The shape given.
        shape: Vec<usize>,
        /// Elements the shape implies.
        expected: usize,
        /// Elements supplied.
        actual: usize,
    },

    /// Batch norm needs `[N, C, ...]`: at least two dimensions.
    #[error("{}", ShapeError::RankTooLow { shape: shape.clone() })]
    RankTooLow {
        /// The shape given.
        shape: Vec<usize>,
    },

    /// The element count of a shape does not fit in memory addresses.
    #[error("{}", ShapeError::TooManyElements { shape: shape.clone() })]
    TooManyElements {
        /// The shape given.
        shape: Vec<usize>,
    },

    /// The tensor has a different channel count from the module or the parameters.
    #[error("the input has {actual} channels but {what} {expected}")]
    ChannelMismatch {
        /// What holds the other count, and how ("the batch norm was built for", "the running
        /// stats (ForwardArgs::running) hold", ...).
        what: &'static str,
        /// Channels the module or parameters hold.
        expected: usize,
        /// Channels of the input.
        actual: usize,
    },

    /// PyTorch's rule: training needs more than one value per channel.
    #[error(
        "Expected more than 1 value per channel when training, got input of shape {shape:?} \
         ({values} value per channel)"
    )]
    TooFewValuesPerChannel {
        /// Input shape.
        shape: Vec<usize>,
        /// Values per channel (N x spatial).
        values: usize,
    },

    /// eps must be finite and non-negative.
    #[error(
        "batch_norm eps must be {rule}, but got {eps}",
        eps = .0,
        rule = if .0.is_finite() { "non-negative" } else { "finite and non-negative" }
    )]
    InvalidEps(f64),

    /// Normalizing with batch statistics needs eps > 0 (PyTorch 2.15 refuses eps = 0 in
    /// training; inference from running stats accepts it).
    #[error(
        "batch_norm eps must be positive during training, but got {0}; eps = 0 is accepted in \
         inference from running statistics only"
    )]
    EpsNotPositiveInTraining(f64),

    /// momentum must lie in [0, 1].
    #[error("momentum must be in [0, 1], got {0}")]
    InvalidMomentum(f64),

    /// The tensor does not fit in one buffer of this device.
    #[error(
        "a tensor of {bytes} bytes is larger than this device's max_buffer_size ({max} bytes); \
         split the batch"
    )]
    TensorTooLarge {
        /// Bytes asked for.
        bytes: u64,
        /// The device's `max_buffer_size`.
        max: u64,
    },

    /// One channel's contiguous run is larger than a storage binding can address.
    #[error(
        "one channel's contiguous run (the product of the spatial sizes) is {bytes} bytes, \
         {} bytes more than one storage binding of this device holds from an aligned offset \
         ({max} bytes); use a device with a larger max_storage_buffer_binding_size",
        bytes - max
    )]
    RunTooLarge {
        /// Bytes of one contiguous run.
        bytes: u64,
        /// Bytes one binding holds: the device's `max_storage_buffer_binding_size` less its
        /// offset alignment.
        max: u64,
    },

    /// The per-channel vectors (gamma and beta, running or saved statistics, gradients) are
    /// bound whole, and do not fit one storage binding.
    #[error(
        "{channels} channels need {bytes} bytes for each per-channel pair (such as gamma and \
         beta), {} bytes over this device's max_storage_buffer_binding_size ({max} bytes); \
         use a device with a larger binding limit",
        bytes - max
    )]
    ChannelVectorsTooLarge {
        /// Channels.
        channels: usize,
        /// Bytes of one pair of per-channel vectors.
        bytes: u64,
        /// The device's limit.
        max: u64,
    },

    /// An operation's reduction partials do not fit one storage binding, even with the
    /// largest chunks the windows allow.
    #[error(
        "the {operation}'s reduction partials need {bytes} bytes ({channels} channels x \
         {chunks} chunks x {partial_bytes} bytes), {} bytes over this device's \
         max_storage_buffer_binding_size ({max} bytes); every chunk already spans a whole \
         window of the tensor, so use a device with a larger binding limit or fewer samples \
         per call",
        bytes - max
    )]
    PartialsTooLarge {
        /// The operation refused.
        operation: &'static str,
        /// Channels.
        channels: usize,
        /// Partials per channel.
        chunks: usize,
        /// Bytes of one partial.
        partial_bytes: u64,
        /// Bytes of all partials.
        bytes: u64,
        /// The device's limit.
        max: u64,
    },

    /// Two tensors of one call disagree in shape or layout.
    #[error("{what}: expected shape {expected:?} ({expected_layout:?}), got {actual:?} ({actual_layout:?})")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// The shape it must have.
        expected: Vec<usize>,
        /// Its required layout.
        expected_layout: Layout,
        /// The shape it has.
        actual: Vec<usize>,
        /// Its layout.
        actual_layout: Layout,
    },

    /// A host-side vector of per-channel values has the wrong length.
    #[error("{what} has {actual} values but there are {expected} channels")]
    ParameterLength {
        /// Which parameter.
        what: &'static str,
        /// Channels.
        expected: usize,
        /// Values given.
        actual: usize,
    },

    /// A caller's buffer lacks a usage the call needs.
    #[error(
        "the buffer lacks the {missing} usage, which {needed_for} needs; create it with that usage"
    )]
    MissingBufferUsage {
        /// The usages missing, e.g. "STORAGE".
        missing: String,
        /// What needs them.
        needed_for: &'static str,
    },

    /// A view's byte offset is not a multiple of its type's alignment.
    #[error(
        "a {dtype} view must start at a multiple of {alignment} bytes (f32: the element size; \
         f16 and bf16: a whole 32-bit word, which holds two elements), but starts at byte \
         {offset}"
    )]
    MisalignedView {
        /// The offset given.
        offset: u64,
        /// The alignment its type needs, bytes.
        alignment: u64,
        /// The view's storage type.
        dtype: DType,
    },

    /// A backward was called with another epilogue than its forward's.
    #[error(
        "the forward ran with the {forward} epilogue but the backward was given {backward}; \
         pass the matching EpilogueGrad (with the forward's output y, and dz for add-relu)"
    )]
    EpilogueMismatch {
        /// The forward's epilogue.
        forward: EpilogueKind,
        /// The backward's.
        backward: EpilogueKind,
    },

    /// A download asked for another element type than the tensor's storage type.
    #[error(
        "this tensor is stored as {stored}, not {requested}: download it as its own type, or as \
         f32 with to_vec()"
    )]
    ElementTypeMismatch {
        /// The tensor's storage type.
        stored: DType,
        /// The type asked for.
        requested: DType,
    },

    /// Tensors of one call are stored in different types.
    #[error("{what} is {actual} but x is {expected}; every tensor of a call has x's storage type")]
    DTypeMismatch {
        /// Which tensor.
        what: &'static str,
        /// x's type.
        expected: DType,
        /// Its type.
        actual: DType,
    },

    /// A view runs past the end of its buffer.
    #[error(
        "a view of {bytes} bytes at byte {offset} runs {} bytes past the end of its \
         {buffer_bytes}-byte buffer",
        offset.saturating_add(*bytes).saturating_sub(*buffer_bytes)
    )]
    ViewPastEnd {
        /// Where the view starts.
        offset: u64,
        /// Bytes it spans.
        bytes: u64,
        /// The buffer's size.
        buffer_bytes: u64,
    },

    /// An input and an output of one call overlap in one buffer.
    #[error(
        "{input} (bytes {input_start}..{input_end}) and {output} (bytes \
         {output_start}..{output_end}) overlap in one buffer; give the output a range of its own"
    )]
    OverlappingViews {
        /// The input.
        input: &'static str,
        /// Its first byte.
        input_start: u64,
        /// One past its last byte.
        input_end: u64,
        /// The output.
        output: &'static str,
        /// Its first byte.
        output_start: u64,
        /// One past its last byte.
        output_end: u64,
    },

    /// A checkpoint could not be read or written.
    #[error("checkpoint {what}: {problem}")]
    Checkpoint {
        /// What is at fault: "key 'bn.weight'", "file 'model.safetensors'", or "file".
        what: String,
        /// What is wrong with it.
        problem: String,
    },

    /// The kernels' WGSL could not be taken from the directory set by
    /// [`GpuContext::set_shader_directory`](crate::GpuContext::set_shader_directory).
    #[error("shader directory '{}': {problem}", directory.display())]
    ShaderDirectory {
        /// The directory.
        directory: std::path::PathBuf,
        /// What is wrong: a file that could not be read or does not compile, or a context
        /// that already built kernels.
        problem: String,
    },

    /// The operation needs something this batch norm does not have.
    #[error("{0}")]
    Unsupported(&'static str),

    /// Tensors from two different GPU contexts were mixed in one call.
    #[error("the tensors of one call must come from the same GpuContext")]
    ContextMismatch,

    /// wgpu reported an out-of-memory error.
    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),

    /// wgpu reported a validation error (a bug in this crate, or a caller's buffer misused).
    #[error("wgpu validation error: {0}")]
    Validation(String),

    /// The device was lost or a buffer could not be read back.
    #[error("the GPU device was lost or failed: {0}")]
    DeviceLost(String),
}

impl From<ShapeError> for BatchNormError {
    fn from(error: ShapeError) -> Self {
        match error {
            ShapeError::RankTooLow { shape } => BatchNormError::RankTooLow { shape },
            ShapeError::TooManyElements { shape } => BatchNormError::TooManyElements { shape },
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = BatchNormError> = std::result::Result<T, E>;
