//! What one timed case is: an operation on a shape in a layout, a storage type and an
//! epilogue; its name in every report; the bytes it must move at least; and the list of cases a
//! suite runs.

use serde::Serialize;
use wgpu_batchnorm::{DType, EpilogueKind, Layout};

/// One batch-norm operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Training forward: batch statistics, normalize, running-stat update.
    TrainForward,
    /// Inference forward from the running stats.
    EvalForward,
    /// Backward through the batch statistics: dx, dgamma, dbeta.
    Backward,
}

impl Op {
    /// Every operation, in the order the suite runs them.
    pub const ALL: [Op; 3] = [Op::TrainForward, Op::EvalForward, Op::Backward];

    /// The name used in every report (and by `scripts/torch_bench.py`).
    pub fn name(self) -> &'static str {
        match self {
            Op::TrainForward => "train-forward",
            Op::EvalForward => "eval-forward",
            Op::Backward => "backward",
        }
    }
}

/// Memory order of a case's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayoutChoice {
    /// `[N, C, d1, ...]` (NCHW).
    ChannelsFirst,
    /// `[N, d1, ..., C]` (NHWC).
    ChannelsLast,
}

impl LayoutChoice {
    /// Both layouts, channels-first first.
    pub const ALL: [LayoutChoice; 2] = [LayoutChoice::ChannelsFirst, LayoutChoice::ChannelsLast];

    /// The library's layout.
    pub fn layout(self) -> Layout {
        match self {
            LayoutChoice::ChannelsFirst => Layout::ChannelsFirst,
            LayoutChoice::ChannelsLast => Layout::ChannelsLast,
        }
    }

    /// The name used in every report (and by `scripts/torch_bench.py`).
    pub fn name(self) -> &'static str {
        match self {
            LayoutChoice::ChannelsFirst => "channels-first",
            LayoutChoice::ChannelsLast => "channels-last",
        }
    }
}

/// The storage type of a case's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DTypeChoice {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl DTypeChoice {
    /// The library's type.
    pub fn dtype(self) -> DType {
        match self {
            DTypeChoice::F32 => DType::F32,
            DTypeChoice::F16 => DType::F16,
            DTypeChoice::Bf16 => DType::BF16,
        }
    }
}

/// What follows the batch norm in the same kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpilogueChoice {
    /// y = bn(x).
    None,
    /// y = relu(bn(x)).
    Relu,
    /// y = relu(bn(x) + z).
    AddRelu,
}

impl EpilogueChoice {
    /// The library's kind.
    pub fn kind(self) -> EpilogueKind {
        match self {
            EpilogueChoice::None => EpilogueKind::None,
            EpilogueChoice::Relu => EpilogueKind::Relu,
            EpilogueChoice::AddRelu => EpilogueKind::AddRelu,
        }
    }
}

/// One timed case: an operation on a shape in a layout, stored in a type, with an epilogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// The operation.
    pub op: Op,
    /// Memory order.
    pub layout: LayoutChoice,
    /// Logical shape `[N, C, d1, ...]`, as PyTorch gives it whatever the memory order.
    pub shape: Vec<usize>,
    /// Storage type of x, y, dy, dx and the shortcut.
    pub dtype: DTypeChoice,
    /// What follows the normalization.
    pub epilogue: EpilogueChoice,
}

impl Case {
    /// The shape in memory order (channels-last moves C to the end), as the library takes it.
    pub fn memory_shape(&self) -> Vec<usize> {
        let mut shape = self.shape.clone();
        if self.layout == LayoutChoice::ChannelsLast {
            let channels = shape.remove(1);
            shape.push(channels);
        }
        shape
    }

    /// Number of channels C.
    pub fn channels(&self) -> usize {
        self.shape[1]
    }

    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The least bytes the operation moves: each tensor it reads once and each it writes
    /// once, at the storage type's size. Forward: x and y, and the shortcut z with add-ReLU.
    /// Backward: x, dy and dx, and with an epilogue the forward's output y (the ReLU's mask),
    /// and with add-ReLU dz.
    pub fn min_bytes(&self) -> u64 {
        let tensors = match (self.op, self.epilogue) {
            (Op::Backward, EpilogueChoice::None) => 3,
            (Op::Backward, EpilogueChoice::Relu) => 4,
            (Op::Backward, EpilogueChoice::AddRelu) => 5,
            (_, EpilogueChoice::AddRelu) => 3,
            _ => 2,
        };
        self.elements() as u64 * tensors * self.dtype.dtype().bytes()
    }

    /// Bytes per element at the minimum (`min_bytes` over the element count).
    pub fn bytes_per_element(&self) -> u64 {
        self.min_bytes() / self.elements().max(1) as u64
    }

    /// The shape as `64x64x112x112`.
    pub fn shape_text(&self) -> String {
        self.shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("x")
    }

    /// The memory order as PyTorch users name it: NC, NCL/NLC, NCHW/NHWC, NCDHW/NDHWC.
    pub fn format(&self) -> String {
        let first = match self.shape.len() {
            2 => "NC",
            3 => "NCL",
            4 => "NCHW",
            5 => "NCDHW",
            _ => return self.layout.name().to_string(),
        };
        match self.layout {
            LayoutChoice::ChannelsFirst => first.to_string(),
            LayoutChoice::ChannelsLast => format!("N{}C", &first[2..]),
        }
    }

    /// `train-forward 64x64x112x112 NCHW`, then the storage type and the epilogue where they
    /// are not f32 and none: `backward 64x64x112x112 NHWC f16 add-relu`.
    pub fn label(&self) -> String {
        let mut label = format!("{} {} {}", self.op.name(), self.shape_text(), self.format());
        if self.dtype != DTypeChoice::F32 {
            label += &format!(" {}", self.dtype.dtype());
        }
        if self.epilogue != EpilogueChoice::None {
            label += &format!(" {}", self.epilogue.kind());
        }
        label
    }
}

/// What a suite runs: every combination of these.
pub struct Selection<'a> {
    /// Logical shapes.
    pub shapes: &'a [Vec<usize>],
    /// Layouts.
    pub layouts: &'a [LayoutChoice],
    /// Storage types.
    pub dtypes: &'a [DTypeChoice],
    /// Epilogues.
    pub epilogues: &'a [EpilogueChoice],
    /// Operations.
    pub ops: &'a [Op],
}

/// The cases of a suite, shape by shape, then layout, storage type, epilogue and operation. A
/// 2-D shape `[N, C]` is the same memory in both layouts, so it runs once (as channels-first)
/// when either is asked for.
pub fn cases(selection: &Selection<'_>) -> Vec<Case> {
    let mut cases = Vec::new();
    for shape in selection.shapes {
        let shape_layouts: Vec<LayoutChoice> = if shape.len() == 2 {
            vec![LayoutChoice::ChannelsFirst]
        } else {
            selection.layouts.to_vec()
        };
        for &layout in &shape_layouts {
            for &dtype in selection.dtypes {
                for &epilogue in selection.epilogues {
                    for &op in selection.ops {
                        cases.push(Case {
                            op,
                            layout,
                            shape: shape.clone(),
                            dtype,
                            epilogue,
                        });
                    }
                }
            }
        }
    }
    cases
}
