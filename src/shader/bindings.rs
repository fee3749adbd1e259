//! One binding number per role, in every program: the table the generated prelude declares
//! bindings from, the step builder binds buffers by, and a naga test checks every entry point
//! against.

/// The uniform block `p` (`Params`), in every program.
pub const PARAMS_BINDING: u32 = 0;

/// What a storage binding holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The input x (one window of it).
    X,
    /// The output y.
    Y,
    /// The upstream gradient dy.
    Dy,
    /// The input gradient dx.
    Dx,
    /// The shortcut z of the add-ReLU epilogue, y = relu(bn(x) + z).
    Shortcut,
    /// Its gradient dz (the add-ReLU backward).
    ShortcutGrad,
    /// The forward's output y, which an epilogue's backward reads for the ReLU's mask.
    Result,
    /// `[gamma (C) | beta (C)]`.
    Affine,
    /// `[running_mean (C) | running_var (C)]`.
    Running,
    /// `[mean (C) | invstd (C)]` a forward saved.
    Stats,
    /// Reduction partials, `C x chunks` of them (scratch).
    Partials,
    /// `[dgamma (C) | dbeta (C)]`.
    Grads,
    /// A layer's count of training batches (one u32), for momentum `None`.
    Batches,
    /// The atomic counters of a merge in the last workgroup, one per channel or band
    /// (scratch, zero between dispatches).
    Counters,
}

/// How a program may use a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 14] = [
        Role::X,
        Role::Y,
        Role::Dy,
        Role::Dx,
        Role::Shortcut,
        Role::ShortcutGrad,
        Role::Result,
        Role::Affine,
        Role::Running,
        Role::Stats,
        Role::Partials,
        Role::Grads,
        Role::Batches,
        Role::Counters,
    ];

    /// The binding number, the WGSL variable's name and its access, the table itself.
    pub const fn entry(self) -> (u32, &'static str, Access) {
        match self {
            Role::X => (1, "x", Access::Read),
            Role::Y => (2, "y", Access::ReadWrite),
            Role::Dy => (3, "dy", Access::Read),
            Role::Dx => (4, "dx", Access::ReadWrite),
            Role::Shortcut => (5, "z", Access::Read),
            Role::ShortcutGrad => (12, "dz", Access::ReadWrite),
            Role::Result => (13, "result", Access::Read),
            Role::Affine => (6, "affine", Access::Read),
            // Written by the statistics' finalize, read by inference's normalize.
            Role::Running => (7, "running", Access::ReadWrite),
            // Written by the statistics and by inference's normalize, read by the backward.
            Role::Stats => (8, "stats", Access::ReadWrite),
            Role::Partials => (9, "partials", Access::ReadWrite),
            Role::Grads => (10, "grads", Access::ReadWrite),
            Role::Batches => (11, "batches", Access::ReadWrite),
            Role::Counters => (14, "counters", Access::ReadWrite),
        }
    }

    /// The binding number.
    pub const fn binding(self) -> u32 {
        self.entry().0
    }

    /// The WGSL variable's name.
    pub const fn name(self) -> &'static str {
        self.entry().1
    }

    /// The access mode.
    pub const fn access(self) -> Access {
        self.entry().2
    }

    /// A batch-sized tensor, stored in the program's element type (the others are per-channel
    /// f32 vectors and partials).
    pub const fn is_tensor(self) -> bool {
        matches!(
            self,
            Role::X
                | Role::Y
                | Role::Dy
                | Role::Dx
                | Role::Shortcut
                | Role::ShortcutGrad
                | Role::Result
        )
    }

    /// A tensor the kernels write.
    pub const fn is_output(self) -> bool {
        matches!(self, Role::Y | Role::Dx | Role::ShortcutGrad)
    }

    /// The access mode in a program variant whose tensor inputs share a buffer with an output
    /// (`inputs_read_write`): then every tensor input is read-write too, since wgpu refuses one
    /// buffer bound read-only and read-write in one dispatch.
    pub const fn access_in(self, inputs_read_write: bool) -> Access {
        match self {
            Role::X | Role::Dy | Role::Shortcut | Role::Result if inputs_read_write => {
                Access::ReadWrite
            }
            _ => self.access(),
        }
    }
}
