//! The uniform block every kernel reads (`p` in WGSL), declared once: the Rust struct and the
//! list of its fields the generated prelude writes the WGSL struct from.

/// Declares [`Params`] and [`PARAMS_FIELDS`] from one list of fields.
macro_rules! uniform_block {
    ($($(#[$doc:meta])* $field:ident: $rust:ty => $wgsl:literal,)*) => {
        /// The uniform block `Params` of the shaders, field for field.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct Params {
            $($(#[$doc])* pub $field: $rust,)*
        }

        /// The fields of [`Params`] in order, with their WGSL types.
        pub const PARAMS_FIELDS: &[(&str, &str)] = &[$((stringify!($field), $wgsl),)*];

        /// The byte offsets of the fields of [`Params`], in order (the naga test compares
        /// them with the WGSL struct's).
        #[cfg(test)]
        pub const PARAMS_OFFSETS: &[usize] = &[$(std::mem::offset_of!(Params, $field),)*];
    };
}

uniform_block! {
    /// Index of the window's element (o0, c0, 0) in x's binding (the kernels' indices are
    /// relative to it; each tensor's load or store adds its own shift).
    x_shift: u32 => "u32",
    /// The same in y's binding.
    y_shift: u32 => "u32",
    /// The same in dy's binding.
    dy_shift: u32 => "u32",
    /// The same in dx's binding.
    dx_shift: u32 => "u32",
    /// The same in the shortcut z's binding (add-ReLU epilogue).
    z_shift: u32 => "u32",
    /// The same in dz's binding (add-ReLU backward).
    dz_shift: u32 => "u32",
    /// The same in the binding of the forward's output, read by an epilogue's backward.
    result_shift: u32 => "u32",
    /// Outer rows of the window.
    o_count: u32 => "u32",
    /// First channel of the window.
    c0: u32 => "u32",
    /// Channels of the window.
    c_count: u32 => "u32",
    /// Channels of the tensor.
    channels: u32 => "u32",
    /// Values per contiguous run (1 channels-last).
    inner: u32 => "u32",
    /// Values per chunk (contiguous reductions) or rows per chunk (strided).
    chunk_len: u32 => "u32",
    /// Chunks per channel in this window.
    chunks: u32 => "u32",
    /// Partial slot of this window's first chunk.
    chunk_base: u32 => "u32",
    /// Partial slots per channel in all.
    chunks_total: u32 => "u32",
    /// Work items of the dispatch: the loop bound of the workgroup and per-thread kernels (the
    /// quad kernel loops over chunks and quads instead).
    items: u32 => "u32",
    /// M, the number of values per channel, as a float.
    values_per_channel: f32 => "f32",
    /// Added to the variance.
    eps: f32 => "f32",
    /// Weight of the batch in the running stats.
    momentum: f32 => "f32",
    /// M / (M - 1): the biased variance to the unbiased one, for the running stats.
    var_correction: f32 => "f32",
    /// Channels per workgroup of the strided kernels (a band; `Plan::band`). The last field:
    /// the block is 96 bytes (a multiple of 16).
    band: u32 => "u32",
}
