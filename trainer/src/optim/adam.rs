//! fairseq's Adam (spec §6.2): one parameter group, float32 moments, eps added
//! to sqrt(v) *before* the bias correction, and decoupled weight decay
//! `p ← p − lr·wd·p` on every trainable tensor. This is not torch's AdamW,
//! whose eps comes after the bias correction.
//!
//! The moments of all parameters live in one flat float32 buffer per device
//! (laid out at the first step or load, in the order of the parameters). A
//! float32 CPU parameter is updated by [`AdamKernel::Fused`], piece by
//! piece so that each piece stays in cache: a Rust pass over the moments, a
//! libtorch `sqrt` of the second moment, a Rust pass over the weights, with
//! the same float32 operations in the same order as the tensor-op
//! arithmetic, so both give the same bits. (libtorch's CPU `sqrt` is not the
//! correctly rounded one, so it stays libtorch's; it is elementwise, so
//! pieces do not change its bits.) Other parameters (CUDA, not float32, not
//! contiguous) go through [`AdamKernel::TensorOps`], libtorch ops on views
//! of the flat buffers. When the parameters and gradients themselves live
//! in flat buffers ([`Adam::use_flat_buffers`], CUDA models), those ops run
//! once per bucket instead of once per tensor: elementwise, they give the
//! same values either way.

use super::OptimArgs;
use crate::dist::FlatRun;
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// The first and second moments of one parameter, float32, on its device.
pub struct Moments {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

/// What a step does with the gradients it reads. The clipper leaves its
/// factor (1 / (loss scale × kept tokens) times the clip coefficient) to
/// this pass, and the gradients can be zeroed here for the next update's
/// accumulation: neither costs a pass of its own over memory. The result is
/// the same as multiplying the gradients in place first (libtorch's
/// `mul_`, float32) and zeroing them afterwards.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradUse {
    /// The gradient the step uses is `factor × .grad`.
    pub factor: f64,
    /// Zero every `.grad` once it has been used (else they are left as they were).
    pub zero_after: bool,
}

impl GradUse {
    /// The gradients as they are, left in place.
    pub const AS_IS: GradUse = GradUse { factor: 1.0, zero_after: false };
}

/// How a float32 CPU parameter is stepped (others always use `TensorOps`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdamKernel {
    /// One pass per element in Rust, split over libtorch's intra-op threads.
    Fused,
    /// The reference's sequence of libtorch ops, one tensor at a time.
    TensorOps,
}

pub struct Adam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
    kernel: AdamKernel,
    state: Option<FlatMoments>,
    /// Threads of the fused kernel, made once for libtorch's thread count.
    pool: Option<rayon::ThreadPool>,
    /// Parameters and gradients in shared flat buffers, stepped run by run.
    runs: Vec<FlatRun>,
    /// How many runs the last step stepped whole.
    whole_runs_stepped: usize,
    /// Under optimiser sharding, per parameter: whether this rank steps it.
    owned: Option<Vec<bool>>,
}

/// What a checkpoint keeps of the optimiser: the step counter and the
/// moments by parameter name (stored as `optimizer.exp_avg.<name>` and
/// `optimizer.exp_avg_sq.<name>`).
pub struct AdamState {
    pub step: u64,
    pub moments: BTreeMap<String, Moments>,
}

/// Where one parameter's moments sit in its device's flat buffers.
struct Slot {
    name: String,
    buffer: usize,
    offset: i64,
    size: Vec<i64>,
}

struct FlatMoments {
    slots: Vec<Slot>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
}

impl FlatMoments {
    /// Zero moments for `params`: one pair of buffers per run of `runs`,
    /// laid out as the run (its parameters' moments at their offsets), and
    /// one pair per device for the other parameters.
    fn new(params: &[(String, Tensor)], runs: &[FlatRun]) -> FlatMoments {
        let mut buffers: Vec<(Device, i64)> = runs.iter().map(|r| (r.param.device(), r.param.numel() as i64)).collect();
        let in_run: BTreeMap<&str, (usize, i64)> = runs
            .iter()
            .enumerate()
            .flat_map(|(b, r)| r.members.iter().map(move |(name, offset)| (name.as_str(), (b, *offset))))
            .collect();
        let mut slots = Vec::with_capacity(params.len());
        for (name, p) in params {
            let (buffer, offset) = match in_run.get(name.as_str()) {
                Some(&at) => at,
                None => {
                    let buffer =
                        (runs.len()..buffers.len()).find(|&b| buffers[b].0 == p.device()).unwrap_or_else(|| {
                            buffers.push((p.device(), 0));
                            buffers.len() - 1
                        });
                    let offset = buffers[buffer].1;
                    buffers[buffer].1 += p.numel() as i64;
                    (buffer, offset)
                }
            };
            slots.push(Slot { name: name.clone(), buffer, offset, size: p.size() });
        }
        let zeros = || buffers.iter().map(|&(d, n)| Tensor::zeros([n], (Kind::Float, d))).collect();
        FlatMoments { slots, exp_avg: zeros(), exp_avg_sq: zeros() }
    }

    fn view(&self, flat: &[Tensor], i: usize) -> Tensor {
        let s = &self.slots[i];
        let numel = s.size.iter().product::<i64>();
        flat[s.buffer].narrow(0, s.offset, numel).view(s.size.as_slice())
    }

    fn moments(&self, i: usize) -> Moments {
        Moments { exp_avg: self.view(&self.exp_avg, i), exp_avg_sq: self.view(&self.exp_avg_sq, i) }
    }

    fn matches(&self, params: &[(String, Tensor)]) -> bool {
        self.slots.len() == params.len()
            && self.slots.iter().zip(params).all(|(s, (name, p))| s.name == *name && s.size == p.size())
    }
}

/// The per-step constants of the arithmetic, as libtorch rounds a double
/// scalar operand to float32 for a float32 tensor.
#[derive(Clone, Copy)]
struct Coefficients {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    /// `−lr·wd`, or `None` without weight decay.
    decay: Option<f32>,
    /// `−lr·sqrt(1 − β2^t)/(1 − β1^t)`.
    neg_step_size: f32,
    /// [`GradUse::factor`].
    grad_factor: f32,
    zero_grad: bool,
}

impl Adam {
    pub fn new(args: &OptimArgs) -> Self {
        Self::with_hyperparameters(args.adam_betas.0, args.adam_betas.1, args.adam_eps, args.weight_decay)
    }

    pub fn with_hyperparameters(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Adam {
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            kernel: AdamKernel::Fused,
            state: None,
            pool: None,
            runs: Vec::new(),
            whole_runs_stepped: 0,
            owned: None,
        }
    }

    /// How many flat runs the last step stepped whole (the rest of their
    /// parameters went tensor by tensor).
    pub fn whole_runs_stepped(&self) -> usize {
        self.whole_runs_stepped
    }

    /// Steps the parameters of `runs` (from [`crate::dist::GradSync::flat_runs`])
    /// a whole run at a time wherever they would take the tensor-op path,
    /// with their moments laid out alike. Must be called before the first
    /// step or [`Adam::load_state`].
    pub fn use_flat_buffers(&mut self, runs: Vec<FlatRun>) -> Result<()> {
        ensure!(self.state.is_none(), "the flat buffers must be given before the Adam state is laid out");
        self.runs = runs;
        Ok(())
    }

    /// Steps only the parameters `owned` marks (in the order of the
    /// parameters every step gets), as one rank of a sharded optimiser
    /// ([`crate::dist::GradSync::shard`]); the others keep their weights and
    /// moments (their owners step them), and their gradients are still
    /// zeroed when the step zeroes gradients. The moments of every parameter
    /// stay allocated, so that a checkpoint can hold them all once gathered.
    pub fn shard(&mut self, owned: Vec<bool>) {
        self.owned = Some(owned);
    }

    /// Chooses the kernel for float32 CPU parameters (the default is `Fused`;
    /// `TensorOps` is the reference arithmetic, kept for CUDA and for checks).
    pub fn set_kernel(&mut self, kernel: AdamKernel) {
        self.kernel = kernel;
    }

    /// Number of steps taken (the `t` of the bias correction).
    pub fn num_steps(&self) -> u64 {
        self.step
    }

    /// One update of every parameter in `params` with learning rate `lr`,
    /// reading the gradients from `p.grad()`: unscaled, normalised and
    /// clipped once multiplied by `grads.factor`. A trainable parameter without a gradient is
    /// stepped with a zero gradient (its moments decay, weight decay applies),
    /// as in the reference's flat fp32 gradient buffer. Every step must pass
    /// the same parameters in the same order.
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64, grads: GradUse) -> Result<()> {
        let state = self.state.take().unwrap_or_else(|| FlatMoments::new(params, &self.runs));
        if !state.matches(params) {
            self.state = Some(state);
            bail!(
                "the Adam state was laid out for other parameters (names or shapes differ); \
                 the checkpoint's optimiser state belongs to another model (use --reset-optimizer)"
            );
        }
        if let Some(owned) = self.owned.as_ref().filter(|o| o.len() != params.len()) {
            let n = owned.len();
            self.state = Some(state);
            bail!("the optimiser's shard marks {n} parameters, but the step got {}", params.len());
        }
        self.step += 1;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - self.beta1.powi(t);
        let bias_correction2 = 1.0 - self.beta2.powi(t);
        let step_size = lr * bias_correction2.sqrt() / bias_correction1;
        let c = Coefficients {
            beta1: self.beta1 as f32,
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            decay: (self.weight_decay != 0.0).then_some((-self.weight_decay * lr) as f32),
            neg_step_size: (-step_size) as f32,
            grad_factor: grads.factor as f32,
            zero_grad: grads.zero_after,
        };
        let rounding = addcmul_rounding();
        let mut fused = Vec::new();
        let by_run = self.whole_runs(params, &state);
        self.whole_runs_stepped = by_run.iter().filter(|&&w| w).count();
        tch::no_grad(|| {
            for (b, run) in self.runs.iter().enumerate().filter(|&(b, _)| by_run[b]) {
                let moments = Moments {
                    exp_avg: state.exp_avg[b].shallow_clone(),
                    exp_avg_sq: state.exp_avg_sq[b].shallow_clone(),
                };
                self.step_tensor_ops(&run.param, Some(run.grad.shallow_clone()), moments, lr, step_size, grads);
            }
            for (i, (_, param)) in params.iter().enumerate() {
                let slot = &state.slots[i];
                if slot.buffer < self.runs.len() && by_run[slot.buffer] {
                    continue;
                }
                if self.owned.as_ref().is_some_and(|owned| !owned[i]) {
                    if grads.zero_after {
                        let grad = param.grad();
                        if grad.defined() {
                            let _ = grad.shallow_clone().zero_();
                        }
                    }
                    continue;
                }
                let grad = Some(param.grad()).filter(Tensor::defined);
                let moments = state.moments(i);
                if self.kernel == AdamKernel::Fused && fusable(param, grad.as_ref()) {
                    fused.push(FusedJob::new(param, grad.as_ref(), &moments, rounding));
                } else {
                    self.step_tensor_ops(param, grad, moments, lr, step_size, grads);
                }
            }
        });
        let pool = self.pool(fused.len());
        tch::no_grad(|| run_pieces(pool, &fused, |piece| piece.step(&c, rounding)));
        self.state = Some(state);
        Ok(())
    }

    /// Per run: whether it is stepped whole. That needs the tensor-op path
    /// (CUDA, or `TensorOps` chosen) and every member still in place: its
    /// weights in the run's buffer and its gradient, if any, a view of the
    /// bucket (a member without one has zeros there after the sync); and
    /// every member among `params`, so that nothing else moves.
    fn whole_runs(&self, params: &[(String, Tensor)], state: &FlatMoments) -> Vec<bool> {
        let mut seen = vec![0; self.runs.len()];
        let mut whole: Vec<bool> =
            self.runs.iter().map(|r| !(self.kernel == AdamKernel::Fused && fusable(&r.param, Some(&r.grad)))).collect();
        let bytes = |offset: i64| offset as usize * Kind::Float.elt_size_in_bytes();
        for (slot, (_, param)) in state.slots.iter().zip(params) {
            let Some(run) = self.runs.get(slot.buffer) else { continue };
            let grad = param.grad();
            let in_place = param.data_ptr() as usize == run.param.data_ptr() as usize + bytes(slot.offset)
                && (!grad.defined() || grad.data_ptr() as usize == run.grad.data_ptr() as usize + bytes(slot.offset));
            whole[slot.buffer] &= in_place;
            seen[slot.buffer] += 1;
        }
        for (b, run) in self.runs.iter().enumerate() {
            whole[b] &= seen[b] == run.members.len();
        }
        whole
    }

    /// The reference's arithmetic as libtorch ops on one parameter (or one
    /// run of them).
    fn step_tensor_ops(
        &self,
        param: &Tensor,
        mut grad: Option<Tensor>,
        moments: Moments,
        lr: f64,
        step_size: f64,
        uses: GradUse,
    ) {
        let g = match &grad {
            Some(g) if uses.factor != 1.0 => g.to_kind(Kind::Float) * uses.factor,
            Some(g) => g.to_kind(Kind::Float),
            None => Tensor::zeros_like(param).to_kind(Kind::Float),
        };
        if let (Some(used), true) = (&mut grad, uses.zero_after) {
            let _ = used.zero_();
        }
        let grad = g;
        let Moments { exp_avg: mut m, exp_avg_sq: mut v } = moments;
        let _ = m.g_mul_scalar_(self.beta1);
        let _ = m.g_add_(&(&grad * (1.0 - self.beta1)));
        let _ = v.g_mul_scalar_(self.beta2);
        let _ = v.addcmul_(&(&grad * (1.0 - self.beta2)), &grad);
        let denom = v.sqrt().g_add_scalar_(self.eps);

        let mut master = if param.kind() == Kind::Float { param.shallow_clone() } else { param.to_kind(Kind::Float) };
        if self.weight_decay != 0.0 {
            let decay = &master * (-self.weight_decay * lr);
            let _ = master.g_add_(&decay);
        }
        let _ = master.g_add_(&(&m / &denom * (-step_size)));
        if param.kind() != Kind::Float {
            param.shallow_clone().copy_(&master);
        }
    }

    /// The step counter and every parameter's moments (views of the flat
    /// buffers; nothing before the first step).
    pub fn state(&self) -> AdamState {
        let moments = match &self.state {
            Some(state) => (0..state.slots.len()).map(|i| (state.slots[i].name.clone(), state.moments(i))).collect(),
            None => BTreeMap::new(),
        };
        AdamState { step: self.step, moments }
    }

    /// Restores a saved state onto the device of each named parameter.
    /// Every name in the state must be one of `params` (a frozen or renamed
    /// parameter means the checkpoint was made with other flags); a
    /// parameter the state lacks starts from zero moments.
    pub fn load_state(&mut self, state: AdamState, params: &[(String, Tensor)]) -> Result<()> {
        let flat = FlatMoments::new(params, &self.runs);
        let index: BTreeMap<&str, usize> = flat.slots.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
        tch::no_grad(|| {
            for (name, m) in &state.moments {
                let Some(&i) = index.get(name.as_str()) else {
                    bail!(
                        "the checkpoint has Adam state for {name}, which is not a trainable parameter of this model \
                         (different --freeze-* flags or architecture?); use --reset-optimizer to start the optimiser afresh"
                    );
                };
                let size = &flat.slots[i].size;
                ensure!(
                    m.exp_avg.size() == *size && m.exp_avg_sq.size() == *size,
                    "Adam state for {name} has shape {:?} but the parameter has {size:?}; \
                     the checkpoint's optimiser state belongs to another model (use --reset-optimizer)",
                    m.exp_avg.size()
                );
                let into = flat.moments(i);
                into.exp_avg.shallow_clone().copy_(&m.exp_avg);
                into.exp_avg_sq.shallow_clone().copy_(&m.exp_avg_sq);
            }
            Ok(())
        })?;
        self.step = state.step;
        self.state = Some(flat);
        Ok(())
    }
}

impl Adam {
    /// The threads of the fused kernel: libtorch's intra-op thread count,
    /// none for one thread or no work.
    fn pool(&mut self, jobs: usize) -> Option<&rayon::ThreadPool> {
        let threads = tch::get_num_threads().max(1) as usize;
        if threads == 1 || jobs == 0 {
            return None;
        }
        if self.pool.as_ref().is_none_or(|p| p.current_num_threads() != threads) {
            self.pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().ok();
        }
        self.pool.as_ref()
    }
}

fn fusable(param: &Tensor, grad: Option<&Tensor>) -> bool {
    let plain = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous();
    plain(param) && grad.is_none_or(|g| plain(g) && g.size() == param.size())
}

/// Raw float32 pointers of one parameter's (or one piece of it) data; the
/// tensors outlive the step, and no two jobs overlap.
#[derive(Clone, Copy)]
struct FusedJob {
    param: *mut f32,
    grad: Option<*mut f32>,
    exp_avg: *mut f32,
    exp_avg_sq: *mut f32,
    len: usize,
    /// Where libtorch's scalar remainder loop starts (see [`AddcmulRounding`]).
    tail_from: usize,
}

// SAFETY: each job owns disjoint memory for the duration of a step.
unsafe impl Send for FusedJob {}
unsafe impl Sync for FusedJob {}

/// Elements per piece: its five float32 streams (weights, gradient, two
/// moments, square root) fit in a core's L2 cache, and it is a multiple of
/// every vector block, so the pieces keep libtorch's remainder positions.
const PIECE: usize = 1 << 14;

/// Runs `f` on every piece of every job, on `pool`'s threads if any.
fn run_pieces(pool: Option<&rayon::ThreadPool>, jobs: &[FusedJob], f: impl Fn(&FusedJob) + Sync) {
    let pieces: Vec<FusedJob> = jobs
        .iter()
        .flat_map(|job| (0..job.len).step_by(PIECE).map(move |s| job.piece(s, PIECE.min(job.len - s))))
        .collect();
    match pool {
        Some(pool) => pool.install(|| pieces.par_iter().for_each(&f)),
        None => pieces.iter().for_each(f),
    }
}

impl FusedJob {
    fn new(param: &Tensor, grad: Option<&Tensor>, m: &Moments, r: &AddcmulRounding) -> FusedJob {
        let len = param.numel();
        FusedJob {
            param: param.data_ptr() as *mut f32,
            grad: grad.map(|g| g.data_ptr() as *mut f32),
            exp_avg: m.exp_avg.data_ptr() as *mut f32,
            exp_avg_sq: m.exp_avg_sq.data_ptr() as *mut f32,
            len,
            tail_from: len - len % r.period,
        }
    }

    /// The piece `[start, start + len)` of this job.
    fn piece(&self, start: usize, len: usize) -> FusedJob {
        // SAFETY: `start + len <= self.len`, within every buffer.
        unsafe {
            FusedJob {
                param: self.param.add(start),
                grad: self.grad.map(|g| g.add(start)),
                exp_avg: self.exp_avg.add(start),
                exp_avg_sq: self.exp_avg_sq.add(start),
                len,
                tail_from: self.tail_from.saturating_sub(start).min(len),
            }
        }
    }

    /// One Adam step of this piece, with `g` the gradient times its factor
    /// (zeroed afterwards if asked): `m ← β1·m + (1−β1)·g`,
    /// `v ← β2·v + (1−β2)·g·g` (as libtorch's `mul_`, `add_` and `addcmul_`
    /// round them), then `p ← p − lr·wd·p − step_size · m / (sqrt(v) + eps)`.
    fn step(&self, c: &Coefficients, r: &AddcmulRounding) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: this CPU has both features.
            return unsafe { self.step_avx2_fma(c, r) };
        }
        self.step_portable(c, r)
    }

    /// [`FusedJob::step`] compiled for AVX2 and FMA: wider vectors, and a
    /// fused multiply-add instruction where one is asked for (`mul_add`)
    /// instead of a call into libm. The arithmetic is the same: Rust never
    /// contracts a multiply and an add by itself.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step_avx2_fma(&self, c: &Coefficients, r: &AddcmulRounding) {
        self.step_portable(c, r)
    }

    #[inline(always)]
    fn step_portable(&self, c: &Coefficients, r: &AddcmulRounding) {
        // SAFETY: the pointers address `len` valid float32 values that no
        // other piece touches (see `FusedJob`).
        let (p, m, v) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.param, self.len),
                std::slice::from_raw_parts_mut(self.exp_avg, self.len),
                std::slice::from_raw_parts_mut(self.exp_avg_sq, self.len),
            )
        };
        let mut zeros;
        let g = match self.grad {
            Some(g) => unsafe { std::slice::from_raw_parts_mut(g, self.len) },
            None => {
                zeros = vec![0.0; self.len];
                &mut zeros[..]
            }
        };
        let t = self.tail_from;
        moments(&mut m[..t], &mut v[..t], &g[..t], c, r.body_fma);
        moments(&mut m[t..], &mut v[t..], &g[t..], c, r.tail_fma);
        if c.zero_grad {
            // While the piece is in cache: no pass of its own over memory.
            g.fill(0.0);
        }
        let mut sqrt = vec![0.0f32; self.len];
        libtorch_sqrt(v, &mut sqrt);
        for ((p, &m), &sqrt) in p.iter_mut().zip(&*m).zip(&sqrt) {
            let denom = sqrt + c.eps;
            if let Some(decay) = c.decay {
                *p = *p + *p * decay;
            }
            *p += (m / denom) * c.neg_step_size;
        }
    }
}

/// `out ← sqrt(x)` by libtorch's own CPU kernel (its bits, not Rust's).
fn libtorch_sqrt(x: &[f32], out: &mut [f32]) {
    let n = [x.len() as i64];
    // SAFETY: both tensors borrow live float32 slices of `n` elements for the
    // duration of this call only.
    let (x, out) = unsafe {
        (
            Tensor::from_blob(x.as_ptr() as *const u8, &n, &[1], Kind::Float, Device::Cpu),
            Tensor::from_blob(out.as_mut_ptr() as *const u8, &n, &[1], Kind::Float, Device::Cpu),
        )
    };
    let _ = x.sqrt_out(&out);
}

#[inline(always)]
fn moments(m: &mut [f32], v: &mut [f32], g: &[f32], c: &Coefficients, fma: bool) {
    for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
        // As libtorch's `mul_` by the factor (exact when it is 1).
        let g = g * c.grad_factor;
        *m = *m * c.beta1 + g * c.one_minus_beta1;
        let (decayed, scaled) = (*v * c.beta2, g * c.one_minus_beta2);
        *v = if fma { scaled.mul_add(g, decayed) } else { decayed + scaled * g };
    }
}

/// How libtorch's CPU `addcmul` rounds `v + t1·t2` in one call over a
/// contiguous range: its vectorised loop covers whole blocks of `period`
/// elements and a scalar loop the remainder, and the compiler may have
/// fused the multiply and the add (one rounding) in either. The fused
/// kernel mirrors both, so that it gives libtorch's bits.
#[derive(Clone, Copy, Debug)]
struct AddcmulRounding {
    body_fma: bool,
    tail_fma: bool,
    period: usize,
}

/// Finds libtorch's [`AddcmulRounding`] once, from one call on 63 elements
/// whose `v + t1·t2` rounds differently with and without a fused multiply-add.
fn addcmul_rounding() -> &'static AddcmulRounding {
    static ROUNDING: std::sync::OnceLock<AddcmulRounding> = std::sync::OnceLock::new();
    ROUNDING.get_or_init(|| {
        const N: usize = 63;
        let t = 1.0 + 2f32.powi(-12);
        let full = |x: f32| Tensor::full([N as i64], f64::from(x), (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| full(-1.0).addcmul(&full(t), &full(t)));
        let fma = t.mul_add(t, -1.0);
        let fused: Vec<bool> = Vec::<f32>::try_from(out).unwrap_or_default().iter().map(|&x| x == fma).collect();
        let Some(&tail_fma) = fused.last() else {
            return AddcmulRounding { body_fma: false, tail_fma: false, period: 1 };
        };
        let tail = fused.iter().rev().take_while(|&&f| f == tail_fma).count();
        // A remainder of `period − 1` elements: 63 is one less than a multiple of every block size up to 64.
        let period = if tail == N { 1 } else { tail + 1 };
        AddcmulRounding { body_fma: fused[0], tail_fma, period }
    })
}
