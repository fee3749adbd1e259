//! Data that lives on the GPU between calls: [`Tensor`] (a batch-norm input or output, with
//! shape, layout and storage type) and [`ChannelPair`] (two per-channel f32 vectors packed in
//! one buffer: gamma and beta, running mean and variance, saved mean and invstd, or dgamma and
//! dbeta).

use std::sync::{Arc, Weak};

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::dtype::{decode, encode, DType, Element};
use crate::error::{BatchNormError, Result};
use crate::gpu::GpuContext;
use crate::layout::{ChannelView, Layout};

const F32_BYTES: u64 = 4;
const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A tensor in GPU memory, with its shape in memory order, its layout and its storage type
/// (f32, f16 or bf16). Clones share the tensor (a handle, as `wgpu::Buffer` is).
#[derive(Clone, Debug)]
pub struct Tensor {
    inner: Arc<TensorInner>,
}

#[derive(Debug)]
pub(crate) struct TensorInner {
    ctx: GpuContext,
    buffer: wgpu::Buffer,
    /// Where the tensor starts in `buffer`, in bytes.
    offset: u64,
    shape: Vec<usize>,
    layout: Layout,
    view: ChannelView,
    dtype: DType,
}

impl Tensor {
    /// Uploads `data` (in memory order) as a tensor of `shape` in `layout`, stored as the
    /// elements' type: `f32`, `half::f16` or `half::bf16`.
    ///
    /// `shape` is in memory order: `[N, C, ...]` for channels-first, `[N, ..., C]` for
    /// channels-last.
    pub fn from_slice<T: Element>(
        ctx: &GpuContext,
        data: &[T],
        shape: &[usize],
        layout: Layout,
    ) -> Result<Self> {
        let values: Vec<f32> = data.iter().map(|v| v.to_f32()).collect();
        Self::from_f32_as(ctx, &values, shape, layout, T::DTYPE)
    }

    /// Uploads f32 `data` stored as `dtype` (each value rounded to nearest even).
    pub fn from_f32_as(
        ctx: &GpuContext,
        data: &[f32],
        shape: &[usize],
        layout: Layout,
        dtype: DType,
    ) -> Result<Self> {
        let view = ChannelView::new(shape, layout)?;
        if view.len() != data.len() {
            return Err(BatchNormError::LengthMismatch {
                shape: shape.to_vec(),
                expected: view.len(),
                actual: data.len(),
            });
        }
        let tensor = Self::zeros_as(ctx, shape, layout, dtype)?;
        if !data.is_empty() {
            let bytes = encode(data, dtype);
            ctx.checked(|_| ctx.queue().write_buffer(tensor.buffer(), 0, &bytes))?;
        }
        Ok(tensor)
    }

    /// Uploads an ndarray whose shape is in memory order for `layout` (any strides).
    pub fn from_array<T: Element>(
        ctx: &GpuContext,
        array: ArrayViewD<'_, T>,
        layout: Layout,
    ) -> Result<Self> {
        let standard = array.as_standard_layout();
        let data = standard
            .as_slice()
            .expect("as_standard_layout gives a contiguous array");
        Self::from_slice(ctx, data, array.shape(), layout)
    }

    /// An f32 tensor of zeros.
    pub fn zeros(ctx: &GpuContext, shape: &[usize], layout: Layout) -> Result<Self> {
        Self::zeros_as(ctx, shape, layout, DType::F32)
    }

    /// A tensor of zeros stored as `dtype`.
    pub fn zeros_as(
        ctx: &GpuContext,
        shape: &[usize],
        layout: Layout,
        dtype: DType,
    ) -> Result<Self> {
        let view = ChannelView::new(shape, layout)?;
        let bytes =
            dtype
                .buffer_bytes(view.len() as u64)
                .ok_or(BatchNormError::TooManyElements {
                    shape: shape.to_vec(),
                })?;
        let max = ctx.limits().max_buffer_size;
        if bytes > max {
            return Err(BatchNormError::TensorTooLarge { bytes, max });
        }
        let buffer = ctx.checked(|device| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-batchnorm tensor"),
                // wgpu cannot bind an empty buffer; an empty tensor keeps one unused word.
                size: bytes.max(F32_BYTES),
                usage: TENSOR_USAGE,
                mapped_at_creation: false,
            })
        })?;
        Ok(Tensor {
            inner: Arc::new(TensorInner {
                ctx: ctx.clone(),
                buffer,
                offset: 0,
                shape: shape.to_vec(),
                layout,
                view,
                dtype,
            }),
        })
    }

    /// Wraps a buffer the caller owns as an f32 tensor starting at its first byte: the same as
    /// [`Tensor::from_buffer_at`] at offset 0.
    pub fn from_buffer(
        ctx: &GpuContext,
        buffer: wgpu::Buffer,
        shape: &[usize],
        layout: Layout,
    ) -> Result<Self> {
        Self::from_buffer_as(ctx, buffer, 0, shape, layout, DType::F32)
    }

    /// An f32 tensor in a caller's buffer, `offset` bytes into it: [`Tensor::from_buffer_as`]
    /// with [`DType::F32`].
    pub fn from_buffer_at(
        ctx: &GpuContext,
        buffer: wgpu::Buffer,
        offset: u64,
        shape: &[usize],
        layout: Layout,
    ) -> Result<Self> {
        Self::from_buffer_as(ctx, buffer, offset, shape, layout, DType::F32)
    }

    /// A tensor of `dtype` that lives in a caller's buffer, starting `offset` bytes into it:
    /// activations inside a training loop's own buffers, no copy. The offset must be a
    /// multiple of 4 bytes: the element size for f32, and for f16 and bf16 a whole 32-bit word
    /// (the kernels store two half elements to a word, and no two threads may write halves of
    /// one word). A half tensor with an odd element count spans its last word whole (the
    /// kernels leave that word's other half as it was), so the buffer must hold it. The buffer
    /// needs `STORAGE` usage (and `COPY_SRC` to download, `COPY_DST` to upload or fill) and
    /// must have been created on `ctx`'s device: wgpu exposes no buffer's device to check, and
    /// a buffer of another device has been seen accepted without an error on a software
    /// adapter.
    ///
    /// An input and the output of one call may be views of one buffer when their ranges do not
    /// overlap; overlapping ranges are refused ([`BatchNormError::OverlappingViews`]).
    pub fn from_buffer_as(
        ctx: &GpuContext,
        buffer: wgpu::Buffer,
        offset: u64,
        shape: &[usize],
        layout: Layout,
        dtype: DType,
    ) -> Result<Self> {
        let view = ChannelView::new(shape, layout)?;
        if !offset.is_multiple_of(dtype.view_alignment()) {
            return Err(BatchNormError::MisalignedView {
                offset,
                alignment: dtype.view_alignment(),
                dtype,
            });
        }
        let bytes =
            dtype
                .buffer_bytes(view.len() as u64)
                .ok_or(BatchNormError::TooManyElements {
                    shape: shape.to_vec(),
                })?;
        if offset.saturating_add(bytes) > buffer.size() {
            return Err(BatchNormError::ViewPastEnd {
                offset,
                bytes,
                buffer_bytes: buffer.size(),
            });
        }
        require_usage(&buffer, wgpu::BufferUsages::STORAGE, "a batch-norm kernel")?;
        Ok(Tensor {
            inner: Arc::new(TensorInner {
                ctx: ctx.clone(),
                buffer,
                offset,
                shape: shape.to_vec(),
                layout,
                view,
                dtype,
            }),
        })
    }

    /// Downloads the tensor in memory order, as f32 (exact for every storage type).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let bytes = self.download()?;
        Ok(decode(&bytes, self.inner.dtype, self.len()))
    }

    /// Downloads the tensor as its own element type: refused unless `T` is its storage type.
    pub fn to_vec_of<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.inner.dtype {
            return Err(BatchNormError::ElementTypeMismatch {
                stored: self.inner.dtype,
                requested: T::DTYPE,
            });
        }
        let bytes = self.download()?;
        let used = self.len() * self.inner.dtype.bytes() as usize;
        Ok(bytemuck::pod_collect_to_vec(&bytes[..used]))
    }

    /// Downloads the tensor as an f32 ndarray of its memory-order shape.
    pub fn to_array(&self) -> Result<ArrayD<f32>> {
        let data = self.to_vec()?;
        Ok(ArrayD::from_shape_vec(IxDyn(&self.inner.shape), data)
            .expect("the shape was checked against the length at creation"))
    }

    /// The tensor's bytes, in whole words.
    fn download(&self) -> Result<Vec<u8>> {
        require_usage(
            &self.inner.buffer,
            wgpu::BufferUsages::COPY_SRC,
            "a download",
        )?;
        self.inner
            .ctx
            .read_bytes(&self.inner.buffer, self.inner.offset, self.word_bytes())
    }

    /// Bytes the tensor spans, rounded up to whole words.
    fn word_bytes(&self) -> u64 {
        (self.len() as u64 * self.inner.dtype.bytes()).next_multiple_of(4)
    }

    /// Overwrites every element with `value`, rounded to the storage type (tests fill outputs
    /// with NaN before a run, so an element that no kernel wrote shows up). A half tensor with
    /// an odd element count keeps the other half of its last word.
    pub fn fill(&self, value: f32) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        require_usage(&self.inner.buffer, wgpu::BufferUsages::COPY_DST, "a fill")?;
        let dtype = self.inner.dtype;
        let mut bytes = encode(&vec![value; self.len()], dtype);
        let used = self.len() * dtype.bytes() as usize;
        if used < bytes.len() {
            // The last word's other half is not the tensor's: keep it.
            let last_word = self.word_bytes() - 4;
            let kept =
                self.inner
                    .ctx
                    .read_bytes(&self.inner.buffer, self.inner.offset + last_word, 4)?;
            bytes[used..].copy_from_slice(&kept[used - last_word as usize..]);
        }
        self.inner.ctx.checked(|_| {
            self.inner
                .ctx
                .queue()
                .write_buffer(&self.inner.buffer, self.inner.offset, &bytes)
        })?;
        self.inner.ctx.submit_and_wait(
            self.inner
                .ctx
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default()),
        )
    }

    /// Shape in memory order.
    pub fn shape(&self) -> &[usize] {
        &self.inner.shape
    }

    /// Memory layout.
    pub fn layout(&self) -> Layout {
        self.inner.layout
    }

    /// Storage type.
    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }

    /// The `[outer][channels][inner]` view of this tensor.
    pub fn view(&self) -> ChannelView {
        self.inner.view
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.inner.view.channels
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.inner.view.len()
    }

    /// True when the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.inner.view.is_empty()
    }

    /// The GPU buffer, for callers that record their own work around this crate's.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.inner.buffer
    }

    /// Where the tensor starts in its buffer, in bytes.
    pub fn offset(&self) -> u64 {
        self.inner.offset
    }

    /// The bytes of its buffer the tensor's elements span.
    pub fn byte_range(&self) -> std::ops::Range<u64> {
        self.inner.offset..self.inner.offset + self.len() as u64 * self.inner.dtype.bytes()
    }

    /// The context the tensor lives in.
    pub fn context(&self) -> &GpuContext {
        &self.inner.ctx
    }

    /// A handle that does not keep the tensor alive (caches hold these).
    pub(crate) fn downgrade(&self) -> Weak<TensorInner> {
        Arc::downgrade(&self.inner)
    }

    /// A new tensor with this one's shape, layout and storage type for an output: zeros, or
    /// the context's debug fill.
    pub(crate) fn output_like(&self) -> Result<Self> {
        let inner = &self.inner;
        let tensor = Self::zeros_as(&inner.ctx, &inner.shape, inner.layout, inner.dtype)?;
        inner
            .ctx
            .apply_debug_fill(tensor.buffer(), self.len() as u64, inner.dtype)?;
        Ok(tensor)
    }

    /// Refuses `other` unless it has this tensor's shape, layout and storage type and lives on
    /// its device.
    pub(crate) fn check_same_shape(&self, other: &Tensor, what: &'static str) -> Result<()> {
        if !self.inner.ctx.same_as(&other.inner.ctx) {
            return Err(BatchNormError::ContextMismatch);
        }
        if self.inner.shape != other.inner.shape || self.inner.layout != other.inner.layout {
            return Err(BatchNormError::ShapeMismatch {
                what,
                expected: self.inner.shape.clone(),
                expected_layout: self.inner.layout,
                actual: other.inner.shape.clone(),
                actual_layout: other.inner.layout,
            });
        }
        if self.inner.dtype != other.inner.dtype {
            return Err(BatchNormError::DTypeMismatch {
                what,
                expected: self.inner.dtype,
                actual: other.inner.dtype,
            });
        }
        Ok(())
    }
}

/// Two per-channel f32 vectors packed in one GPU buffer as `[first (C) | second (C)]`, so a
/// kernel binds both with one binding (shaders have few storage bindings to spare).
#[derive(Clone, Debug)]
pub struct ChannelPair {
    ctx: GpuContext,
    buffer: wgpu::Buffer,
    channels: usize,
}

impl ChannelPair {
    /// Uploads two vectors of equal length, converted to f32 (half-precision parameters are
    /// kept in f32, as PyTorch keeps them for a half batch norm).
    pub fn new<T: Element>(ctx: &GpuContext, first: &[T], second: &[T]) -> Result<Self> {
        if first.len() != second.len() {
            return Err(BatchNormError::ParameterLength {
                what: "the second vector",
                expected: first.len(),
                actual: second.len(),
            });
        }
        let pair = Self::zeros(ctx, first.len())?;
        pair.write(first, second)?;
        Ok(pair)
    }

    /// Two zero vectors of `channels` values.
    pub fn zeros(ctx: &GpuContext, channels: usize) -> Result<Self> {
        let max = ctx.limits().max_buffer_size;
        let bytes = (channels as u64)
            .checked_mul(2 * F32_BYTES)
            .ok_or(BatchNormError::TensorTooLarge {
                bytes: u64::MAX,
                max,
            })?
            .max(F32_BYTES);
        if bytes > max {
            return Err(BatchNormError::TensorTooLarge { bytes, max });
        }
        let buffer = ctx.checked(|device| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-batchnorm per-channel pair"),
                size: bytes,
                usage: TENSOR_USAGE,
                mapped_at_creation: false,
            })
        })?;
        Ok(ChannelPair {
            ctx: ctx.clone(),
            buffer,
            channels,
        })
    }

    /// Two vectors for an output of `channels` values each: zeros, or the context's debug
    /// fill.
    pub(crate) fn output(ctx: &GpuContext, channels: usize) -> Result<Self> {
        let pair = Self::zeros(ctx, channels)?;
        ctx.apply_debug_fill(&pair.buffer, channels as u64 * 2, DType::F32)?;
        Ok(pair)
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Downloads both vectors.
    pub fn read(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let bytes = self
            .ctx
            .read_bytes(&self.buffer, 0, 2 * self.channels as u64 * F32_BYTES)?;
        let mut both = decode(&bytes, DType::F32, 2 * self.channels);
        let second = both.split_off(self.channels);
        Ok((both, second))
    }

    /// Overwrites both vectors (converted to f32); refused (and nothing written) unless each
    /// has `channels` values.
    pub fn write<T: Element>(&self, first: &[T], second: &[T]) -> Result<()> {
        for (what, values) in [("the first vector", first), ("the second vector", second)] {
            if values.len() != self.channels {
                return Err(BatchNormError::ParameterLength {
                    what,
                    expected: self.channels,
                    actual: values.len(),
                });
            }
        }
        if self.channels == 0 {
            return Ok(());
        }
        let both = [to_f32(first), to_f32(second)].concat();
        self.ctx.checked(|_| {
            self.ctx
                .queue()
                .write_buffer(&self.buffer, 0, bytemuck::cast_slice(&both))
        })
    }

    /// The GPU buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub(crate) fn context(&self) -> &GpuContext {
        &self.ctx
    }
}

/// Refuses a buffer without `usage`, naming what needs it.
fn require_usage(
    buffer: &wgpu::Buffer,
    usage: wgpu::BufferUsages,
    needed_for: &'static str,
) -> Result<()> {
    if buffer.usage().contains(usage) {
        Ok(())
    } else {
        Err(BatchNormError::MissingBufferUsage {
            missing: (usage - buffer.usage())
                .iter_names()
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
                .join(" | "),
            needed_for,
        })
    }
}

/// Values as f32.
fn to_f32<T: Element>(values: &[T]) -> Vec<f32> {
    values.iter().map(|v| v.to_f32()).collect()
}
