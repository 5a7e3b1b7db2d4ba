//! Exact nearest-codeword search under squared L2, in bounded memory.
//!
//! Five implementations give the same answer (ties go to the lowest index):
//! - [`SearchMethod::Fused`] (CPU): a register-tiled kernel that computes `‖e‖² − 2⟨x, e⟩` for a
//!   4-row × 16-codeword tile and folds it straight into a running per-lane minimum, so no
//!   distance is ever written to memory. Rows are split over the rayon pool; codewords are
//!   visited in panels that stay in cache. AVX2 is used when the CPU has it (chosen at run time,
//!   same arithmetic, so results do not depend on the machine).
//! - [`SearchMethod::Gemm`] (CPU, large `D`): `⟨x, e⟩` for a block of rows by GEMM into a
//!   bounded buffer, then a row-wise argmin of `‖e‖² − 2⟨x, e⟩`.
//! - [`SearchMethod::KdTree`] (CPU, small `D`): a k-d tree with a bounding box per node,
//!   pruning only subtrees strictly farther than the best, so ties are still resolved to the
//!   lowest index. A codebook's [`SearchCache`] keeps its tree between steps and refits the
//!   boxes to the moved codewords (`O(N·D)`) instead of rebuilding it (`O(N log N)`).
//! - [`SearchMethod::Sorted`] (CPU, `D = 1`): binary search in the sorted codebook, `O(T log N)`.
//! - [`SearchMethod::Blocked`] (any device): candle matmul + argmin over row blocks whose
//!   `rows × N` distance block never exceeds [`MAX_BLOCK_BYTES`].
//!
//! [`nearest_brute_force`] is the plain reference (exact distances in f64) the tests compare with.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use vq_ops::kernels::search::{nearest_fused, nearest_gemm};

use crate::error::{Result, VqError};

/// Upper bound of the distance block the [`SearchMethod::Blocked`] path materialises.
pub(crate) const MAX_BLOCK_BYTES: usize = 64 << 20;

/// From this codeword dimension on, the CPU search uses GEMM instead of the fused kernel.
pub(crate) const GEMM_MIN_DIM: usize = 8;

/// Up to this codeword dimension (from 2), the CPU search uses a k-d tree.
pub(crate) const KDTREE_MAX_DIM: usize = 4;

/// Which nearest-neighbour implementation to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchMethod {
    /// On the CPU: `Sorted` for `D = 1`, `KdTree` up to [`KDTREE_MAX_DIM`], `Fused` below
    /// [`GEMM_MIN_DIM`], `Gemm` from there; `Blocked` on accelerators.
    #[default]
    Auto,
    /// Fused distance + argmin kernel (CPU only).
    Fused,
    /// Blocked GEMM + argmin (CPU only).
    Gemm,
    /// Exact k-d tree search (CPU only; fast for small `D`).
    KdTree,
    /// Sorted-codebook search (CPU only, `D = 1`).
    Sorted,
    /// Blocked matmul + argmin with candle ops (any device).
    Blocked,
}

/// Index of the nearest codeword (squared L2, lowest index on ties) for every row.
///
/// * `x`: `[T, D]` f32, the vectors to quantize.
/// * `codebook`: `[N, D]` f32.
/// * returns `[T]` u32 on the device of `x`.
pub(crate) fn nearest(x: &Tensor, codebook: &Tensor, method: SearchMethod) -> Result<Tensor> {
    nearest_with(x, codebook, method, None)
}

/// [`nearest`] that keeps a codebook's search state in `cache` between calls (the k-d tree:
/// see [`SearchCache`]); the answers are the same with or without it.
pub(crate) fn nearest_with(
    x: &Tensor,
    codebook: &Tensor,
    method: SearchMethod,
    cache: Option<&SearchCache>,
) -> Result<Tensor> {
    let _span = tracing::trace_span!("nearest", t = x.dim(0).unwrap_or(0)).entered();
    let (t, d) = x
        .dims2()
        .map_err(|_| VqError::input("x", format!("expected [T, D], got {:?}", x.shape())))?;
    let (n, d2) = codebook.dims2().map_err(|_| {
        VqError::input(
            "codebook",
            format!("expected [N, D], got {:?}", codebook.shape()),
        )
    })?;
    if d != d2 {
        return Err(VqError::input(
            "x",
            format!("vector dimension {d} differs from the codebook's {d2}"),
        ));
    }
    if n == 0 {
        return Err(VqError::input("codebook", "has no rows"));
    }
    if d == 0 {
        return Err(VqError::input("codebook", "has dimension D = 0"));
    }
    if x.dtype() != DType::F32 || codebook.dtype() != DType::F32 {
        return Err(VqError::input("x", "nearest-neighbour search expects f32"));
    }
    let on_cpu = matches!(x.device(), Device::Cpu);
    let method = match method {
        SearchMethod::Auto if !on_cpu => SearchMethod::Blocked,
        SearchMethod::Auto if d == 1 => SearchMethod::Sorted,
        SearchMethod::Auto if d <= KDTREE_MAX_DIM => SearchMethod::KdTree,
        SearchMethod::Auto if d >= GEMM_MIN_DIM => SearchMethod::Gemm,
        SearchMethod::Auto => SearchMethod::Fused,
        m => m,
    };
    if t == 0 {
        return Ok(Tensor::zeros(0, DType::U32, x.device())?);
    }
    match method {
        SearchMethod::Blocked => nearest_blocked(x, codebook),
        SearchMethod::Sorted | SearchMethod::Fused | SearchMethod::Gemm | SearchMethod::KdTree => {
            if !on_cpu {
                return Err(VqError::input(
                    "x",
                    "fused/sorted search runs on the CPU only",
                ));
            }
            let x = x.contiguous()?;
            let codebook = codebook.contiguous()?;
            let idx = with_cpu_f32(&x, |xs| {
                with_cpu_f32(&codebook, |es| {
                    if method == SearchMethod::Sorted {
                        if d != 1 {
                            return Err(VqError::input(
                                "codebook",
                                format!("sorted search needs D = 1, got D = {d}"),
                            ));
                        }
                        Ok(nearest_sorted_1d(xs, es))
                    } else if method == SearchMethod::Gemm {
                        Ok(nearest_gemm(xs, es, d))
                    } else if method == SearchMethod::KdTree {
                        Ok(match cache {
                            Some(c) => nearest_kdtree_cached(xs, es, d, c),
                            None => nearest_kdtree(xs, es, d),
                        })
                    } else {
                        Ok(nearest_fused(xs, es, d))
                    }
                })?
            })??;
            Ok(Tensor::from_vec(idx, t, x.device())?)
        }
        SearchMethod::Auto => unreachable!("resolved above"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor without copying it.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(VqError::input("tensor", "expected a CPU tensor"));
    };
    let data = cpu.as_slice::<f32>()?;
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| VqError::input("tensor", "expected a contiguous tensor"))?;
    Ok(f(&data[a..b]))
}

fn nearest_blocked(x: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    let (t, _) = x.dims2()?;
    let n = codebook.dim(0)?;
    let e_norm = codebook.sqr()?.sum(1)?.unsqueeze(0)?; // [1, N]
    let et = codebook.t()?.contiguous()?; // [D, N]
                                          // Three `rows × N` f32 tensors are alive at once (product, scaled, shifted).
    let rows = (MAX_BLOCK_BYTES / (12 * n)).clamp(1, t);
    let index = Tensor::arange(0u32, n as u32, x.device())?.unsqueeze(0)?; // [1, N]
    let mut parts = Vec::with_capacity(t.div_ceil(rows));
    let mut start = 0;
    while start < t {
        let len = rows.min(t - start);
        let xb = x.narrow(0, start, len)?;
        let dist = xb.matmul(&et)?.affine(-2.0, 0.0)?.broadcast_add(&e_norm)?;
        // The lowest index among the minima (argmin kernels do not promise it on every device).
        let min = dist.min_keepdim(1)?;
        let at_min = dist.broadcast_eq(&min)?;
        let beyond = Tensor::full(n as u32, (len, n), x.device())?;
        parts.push(
            at_min
                .where_cond(&index.broadcast_as((len, n))?, &beyond)?
                .min(1)?,
        );
        start += len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Plain reference: exact squared distances in f64, strict `<` scan so the lowest index wins.
///
/// `x` is `[T, D]` and `codebook` `[N, D]`, both row-major.
#[cfg(test)]
pub(crate) fn nearest_brute_force(x: &[f32], codebook: &[f32], d: usize) -> Vec<u32> {
    assert!(d > 0 && x.len().is_multiple_of(d) && codebook.len().is_multiple_of(d));
    x.chunks_exact(d)
        .map(|xr| {
            let mut best = f64::INFINITY;
            let mut arg = 0u32;
            for (j, er) in codebook.chunks_exact(d).enumerate() {
                let dist: f64 = xr
                    .iter()
                    .zip(er)
                    .map(|(&a, &b)| {
                        let z = a as f64 - b as f64;
                        z * z
                    })
                    .sum();
                if dist < best {
                    best = dist;
                    arg = j as u32;
                }
            }
            arg
        })
        .collect()
}

/// Binary search in the sorted codebook (`D = 1`); ties go to the lowest index.
pub(crate) fn nearest_sorted_1d(x: &[f32], codebook: &[f32]) -> Vec<u32> {
    let n = codebook.len();
    assert!(n > 0);
    // Each codeword as one integer key, its value's order-preserving bit image above its index:
    // sorting the keys orders by (value, index) as `total_cmp` would, with integer compares
    // (faster than sorting `(f32, u32)` pairs: docs/benchmarks.md, 2026-12-04).
    // −0.0 and +0.0 are one value, one run (`+ 0.0` maps −0.0 to +0.0).
    let key = |v: f32| {
        let b = (v + 0.0).to_bits();
        if b >> 31 == 1 {
            !b
        } else {
            b | 0x8000_0000
        }
    };
    let mut order: Vec<u64> = codebook
        .iter()
        .enumerate()
        .map(|(i, &v)| (u64::from(key(v)) << 32) | i as u64)
        .collect();
    order.par_sort_unstable();
    let index = |k: u64| (k & 0xffff_ffff) as u32;
    let vals: Vec<f32> = order
        .iter()
        .map(|&k| codebook[index(k) as usize] + 0.0)
        .collect();
    // For every sorted slot, the lowest codebook index among the codewords of equal value:
    // sorting by (value, index) puts it first in its run, so copy it along the run.
    let mut best_idx: Vec<u32> = order.iter().map(|&k| index(k)).collect();
    for i in 1..n {
        if vals[i] == vals[i - 1] {
            best_idx[i] = best_idx[i - 1];
        }
    }
    x.par_iter()
        .with_min_len(1024)
        .map(|&v| {
            let v = v + 0.0;
            let p = vals.partition_point(|&e| e < v);
            let right = (p < n).then(|| {
                let z = vals[p] - v;
                (z * z, best_idx[p])
            });
            let left = (p > 0).then(|| {
                let z = v - vals[p - 1];
                (z * z, best_idx[p - 1])
            });
            match (left, right) {
                (Some(l), Some(r)) => {
                    if l.0 < r.0 || (l.0 == r.0 && l.1 < r.1) {
                        l.1
                    } else {
                        r.1
                    }
                }
                (Some(l), None) => l.1,
                (None, Some(r)) => r.1,
                (None, None) => unreachable!("the codebook is not empty"),
            }
        })
        .collect()
}

/// Codewords per k-d tree leaf.
const KD_LEAF: usize = 12;

/// A refitted tree is rebuilt once its queries visit this many times the leaves they visited
/// right after the last build.
const KD_REBUILD_RATIO: f64 = 1.5;

#[derive(Clone, Copy)]
struct KdNode {
    leaf: bool,
    /// Children (inner node) or the leaf's range in the reordered points.
    a: u32,
    b: u32,
}

/// A k-d tree over the codebook: median splits on the widest dimension give its shape, and
/// every node keeps the bounding box of its codewords, so the tree stays exact when the
/// codewords move and only the boxes are refitted ([`KdTree::refit`]).
struct KdTree {
    d: usize,
    points: Vec<f32>,
    ids: Vec<u32>,
    nodes: Vec<KdNode>,
    /// Per node, `lo[0..d]` then `hi[0..d]` of its codewords.
    bounds: Vec<f32>,
}

impl KdTree {
    fn build(codebook: &[f32], d: usize) -> Self {
        let n = codebook.len() / d;
        let mut perm: Vec<u32> = (0..n as u32).collect();
        let nodes = Self::build_node(codebook, d, &mut perm, 0, 0);
        let mut tree = Self {
            d,
            points: vec![0.0; n * d],
            ids: perm,
            bounds: vec![0.0; nodes.len() * 2 * d],
            nodes,
        };
        tree.refit(codebook);
        tree
    }

    /// Moves every codeword to its row of `codebook` (same `[N, D]`) and refits the boxes,
    /// leaves first: `O(N·D)`, against `O(N log N)` for a build.
    fn refit(&mut self, codebook: &[f32]) {
        let d = self.d;
        for (p, &i) in self.ids.iter().enumerate() {
            let i = i as usize;
            self.points[p * d..(p + 1) * d].copy_from_slice(&codebook[i * d..(i + 1) * d]);
        }
        // Children come after their parent, so a reverse pass sees them first.
        for ni in (0..self.nodes.len()).rev() {
            let node = self.nodes[ni];
            let (head, tail) = self.bounds.split_at_mut((ni + 1) * 2 * d);
            let out = &mut head[ni * 2 * d..];
            out[..d].fill(f32::INFINITY);
            out[d..].fill(f32::NEG_INFINITY);
            let mut widen = |lo: &[f32], hi: &[f32]| {
                for k in 0..d {
                    out[k] = out[k].min(lo[k]);
                    out[d + k] = out[d + k].max(hi[k]);
                }
            };
            if node.leaf {
                for e in self.points[node.a as usize * d..node.b as usize * d].chunks_exact(d) {
                    widen(e, e);
                }
            } else {
                for c in [node.a as usize, node.b as usize] {
                    let b = &tail[(c - ni - 1) * 2 * d..(c - ni) * 2 * d];
                    widen(&b[..d], &b[d..]);
                }
            }
        }
    }

    /// The subtree over `perm` (the codewords `base..base + perm.len()` of the final order),
    /// root first; children are node indices within the returned vector, leaves hold ranges of
    /// the final order. The top levels build their halves in parallel.
    fn build_node(cb: &[f32], d: usize, perm: &mut [u32], base: usize, depth: u32) -> Vec<KdNode> {
        let (lo, hi) = (base, base + perm.len());
        if perm.len() <= KD_LEAF {
            return vec![KdNode {
                leaf: true,
                a: lo as u32,
                b: hi as u32,
            }];
        }
        let val = |i: u32, k: usize| cb[i as usize * d + k];
        let dim = (0..d)
            .map(|k| {
                let (mn, mx) = perm
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &i| {
                        (a.min(val(i, k)), b.max(val(i, k)))
                    });
                (k, mx - mn)
            })
            .fold(
                (0, f32::NEG_INFINITY),
                |best, c| if c.1 > best.1 { c } else { best },
            )
            .0;
        let mid = perm.len() / 2;
        perm.select_nth_unstable_by(mid, |&p, &q| val(p, dim).total_cmp(&val(q, dim)));
        let (left, right) = perm.split_at_mut(mid);
        let (a, b) = if depth < 3 {
            rayon::join(
                || Self::build_node(cb, d, left, lo, depth + 1),
                || Self::build_node(cb, d, right, lo + mid, depth + 1),
            )
        } else {
            (
                Self::build_node(cb, d, left, lo, depth + 1),
                Self::build_node(cb, d, right, lo + mid, depth + 1),
            )
        };
        // Root, then the left subtree (offset 1), then the right one (offset 1 + |left|).
        let (oa, ob) = (1u32, 1 + a.len() as u32);
        let shift = |n: KdNode, off: u32| {
            if n.leaf {
                n
            } else {
                KdNode {
                    a: n.a + off,
                    b: n.b + off,
                    ..n
                }
            }
        };
        let mut nodes = Vec::with_capacity(1 + a.len() + b.len());
        nodes.push(KdNode {
            leaf: false,
            a: oa,
            b: ob,
        });
        nodes.extend(a.into_iter().map(|n| shift(n, oa)));
        nodes.extend(b.into_iter().map(|n| shift(n, ob)));
        nodes
    }

    /// Squared distance from `x` to node `ni`'s box, term by term as the codeword distances
    /// (each term is at most the one of any codeword in the box, rounding being monotone), so
    /// it never exceeds the computed distance of a codeword inside.
    fn box_distance(&self, ni: u32, x: &[f32]) -> f32 {
        let d = self.d;
        let b = &self.bounds[ni as usize * 2 * d..(ni as usize + 1) * 2 * d];
        let mut dist = 0f32;
        for k in 0..d {
            let z = if x[k] < b[k] {
                b[k] - x[k]
            } else if x[k] > b[d + k] {
                x[k] - b[d + k]
            } else {
                0.0
            };
            dist += z * z;
        }
        dist
    }

    /// Exact nearest (squared L2 in f32, lowest index on ties) and the number of leaves
    /// visited. A subtree is skipped only when its box is strictly farther than the best
    /// distance, so equally near codewords are all seen.
    fn query(&self, x: &[f32], stack: &mut Vec<(u32, f32)>) -> (u32, u32) {
        let d = self.d;
        let (mut best, mut arg, mut visits) = (f32::INFINITY, u32::MAX, 0u32);
        stack.clear();
        stack.push((0, self.box_distance(0, x)));
        while let Some((ni, bound)) = stack.pop() {
            if bound > best {
                continue;
            }
            let node = self.nodes[ni as usize];
            if node.leaf {
                visits += 1;
                for p in node.a as usize..node.b as usize {
                    let e = &self.points[p * d..(p + 1) * d];
                    let mut dist = 0f32;
                    for k in 0..d {
                        let z = x[k] - e[k];
                        dist += z * z;
                    }
                    let id = self.ids[p];
                    if dist < best || (dist == best && id < arg) {
                        best = dist;
                        arg = id;
                    }
                }
                continue;
            }
            let (da, db) = (self.box_distance(node.a, x), self.box_distance(node.b, x));
            // Push the far side first so the near side is explored first.
            if da <= db {
                stack.push((node.b, db));
                stack.push((node.a, da));
            } else {
                stack.push((node.a, da));
                stack.push((node.b, db));
            }
        }
        // `u32::MAX` only with NaN input: no codeword compares as nearer.
        (if arg == u32::MAX { 0 } else { arg }, visits)
    }

    /// Every row of `x` `[T, D]`: its nearest codeword, and the leaves visited in all.
    fn query_all(&self, x: &[f32]) -> (Vec<u32>, u64) {
        let d = self.d;
        let mut out = vec![0u32; x.len() / d];
        let visits = out
            .par_chunks_mut(256)
            .enumerate()
            .map(|(ci, o)| {
                let mut stack = Vec::with_capacity(64);
                let mut visits = 0u64;
                for (i, v) in o.iter_mut().enumerate() {
                    let r = ci * 256 + i;
                    let (id, n) = self.query(&x[r * d..(r + 1) * d], &mut stack);
                    *v = id;
                    visits += u64::from(n);
                }
                visits
            })
            .sum();
        (out, visits)
    }
}

fn check_kdtree_input(x: &[f32], codebook: &[f32], d: usize) {
    assert!(
        d > 0
            && x.len().is_multiple_of(d)
            && codebook.len().is_multiple_of(d)
            && !codebook.is_empty()
    );
}

/// Exact k-d tree search (CPU, small `D`): `x` `[T, D]`, `codebook` `[N, D]`, row-major;
/// lowest index on ties. The tree is built for this call.
pub(crate) fn nearest_kdtree(x: &[f32], codebook: &[f32], d: usize) -> Vec<u32> {
    check_kdtree_input(x, codebook, d);
    KdTree::build(codebook, d).query_all(x).0
}

/// The search state one codebook keeps between calls: its k-d tree, refitted to the moved
/// codewords instead of rebuilt (the EMA moves every codeword a little each step, so the tree's
/// shape stays good for many steps). The answers do not depend on it: a refitted tree is as
/// exact as a new one. A clone starts empty.
#[derive(Default)]
pub(crate) struct SearchCache {
    kd: std::sync::Mutex<KdSlot>,
}

#[derive(Default)]
struct KdSlot {
    cached: Option<CachedKdTree>,
    /// Trees built through this cache.
    builds: u64,
}

struct CachedKdTree {
    tree: KdTree,
    /// Leaves visited per query by the first search after the build.
    visits_at_build: Option<f64>,
    /// The last search visited [`KD_REBUILD_RATIO`] times as many: build anew next call.
    stale: bool,
}

impl Clone for SearchCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for SearchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SearchCache")
    }
}

/// [`nearest_kdtree`] through `cache`: the tree of the previous call is refitted to `codebook`
/// when it has the same shape and its queries have not grown [`KD_REBUILD_RATIO`] times as
/// costly as right after its build; otherwise it is built anew.
pub(crate) fn nearest_kdtree_cached(
    x: &[f32],
    codebook: &[f32],
    d: usize,
    cache: &SearchCache,
) -> Vec<u32> {
    check_kdtree_input(x, codebook, d);
    let mut guard = cache.kd.lock().unwrap_or_else(|e| e.into_inner());
    let KdSlot { cached, builds } = &mut *guard;
    let n = codebook.len() / d;
    let state = match cached.as_mut() {
        Some(s) if !s.stale && s.tree.d == d && s.tree.ids.len() == n => {
            let _span = tracing::trace_span!("kdtree_refit", n).entered();
            s.tree.refit(codebook);
            s
        }
        _ => {
            let _span = tracing::trace_span!("kdtree_build", n).entered();
            *builds += 1;
            cached.insert(CachedKdTree {
                tree: KdTree::build(codebook, d),
                visits_at_build: None,
                stale: false,
            })
        }
    };
    let (out, visits) = state.tree.query_all(x);
    let per_query = visits as f64 / out.len().max(1) as f64;
    match state.visits_at_build {
        None => state.visits_at_build = Some(per_query),
        Some(at_build) => state.stale = per_query > KD_REBUILD_RATIO * at_build,
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn ints(rng: &mut ChaCha8Rng, len: usize, lo: i32, hi: i32) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(lo..=hi) as f32).collect()
    }

    fn gauss(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| {
                let u: f32 = rng.random_range(-1.0..1.0);
                let v: f32 = rng.random_range(-1.0..1.0);
                u + v
            })
            .collect()
    }

    /// Integer-valued data: every distance is exact in f32, so all methods must agree with the
    /// f64 brute force bit for bit, ties included (small ranges produce many ties).
    #[test]
    fn exact_on_integer_data_with_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &(n, d) in &[
            (1usize, 1usize),
            (1, 3),
            (2, 1),
            (5, 2),
            (17, 1),
            (33, 4),
            (100, 7),
            (512, 128),
            (4096, 16),
            (65536, 1),
            (16384, 4),
        ] {
            let t = if n * d > 100_000 { 300 } else { 129 };
            let x = ints(&mut rng, t * d, -3, 3);
            let e = ints(&mut rng, n * d, -3, 3);
            let want = nearest_brute_force(&x, &e, d);
            assert_eq!(nearest_fused(&x, &e, d), want, "fused n={n} d={d}");
            assert_eq!(nearest_gemm(&x, &e, d), want, "gemm n={n} d={d}");
            assert_eq!(nearest_kdtree(&x, &e, d), want, "kdtree n={n} d={d}");

            if d == 1 {
                assert_eq!(nearest_sorted_1d(&x, &e), want, "sorted n={n}");
            }
            let xt = Tensor::from_vec(x.clone(), (t, d), &Device::Cpu).unwrap();
            let et = Tensor::from_vec(e.clone(), (n, d), &Device::Cpu).unwrap();
            let blocked = nearest(&xt, &et, SearchMethod::Blocked)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            assert_eq!(blocked, want, "blocked n={n} d={d}");
            let auto = nearest(&xt, &et, SearchMethod::Auto)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            assert_eq!(auto, want, "auto n={n} d={d}");
        }
    }

    /// Continuous data: f32 rounding can only flip near-ties, so the chosen codeword's exact
    /// distance must equal the exact minimum up to f32 rounding of the expansion.
    #[test]
    fn near_optimal_on_continuous_data() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for &(n, d) in &[
            (512usize, 128usize),
            (2048, 32),
            (8192, 8),
            (32768, 2),
            (65536, 1),
        ] {
            let t = 200;
            let x = gauss(&mut rng, t * d);
            let e = gauss(&mut rng, n * d);
            let want = nearest_brute_force(&x, &e, d);
            let dist = |r: usize, j: u32| -> f64 {
                (0..d)
                    .map(|k| {
                        let z = x[r * d + k] as f64 - e[j as usize * d + k] as f64;
                        z * z
                    })
                    .sum()
            };
            // (name, result, computes (x − e)² directly)
            let mut methods = vec![
                ("fused", nearest_fused(&x, &e, d), false),
                ("gemm", nearest_gemm(&x, &e, d), false),
            ];
            if d <= 8 {
                methods.push(("kdtree", nearest_kdtree(&x, &e, d), true));
            }
            if d == 1 {
                methods.push(("sorted", nearest_sorted_1d(&x, &e), true));
            }
            for (name, got, direct) in methods {
                let mut same = 0;
                for r in 0..t {
                    let (a, b) = (dist(r, got[r]), dist(r, want[r]));
                    let scale: f64 = 1.0
                        + (0..d).map(|k| (x[r * d + k] as f64).powi(2)).sum::<f64>()
                        + (0..d)
                            .map(|k| (e[got[r] as usize * d + k] as f64).powi(2))
                            .sum::<f64>();
                    // Direct (x − e)² sums differ from exact distances only by f32 rounding of
                    // the distance itself; the expansion ‖e‖² − 2⟨x, e⟩ also by ~1e-7·‖e‖².
                    let tol = if direct {
                        1e-6 * b.max(1e-30) + 1e-12
                    } else {
                        1e-5 * scale
                    };
                    assert!(a - b <= tol, "{name} row {r}: {a} vs {b} (n={n} d={d})");
                    same += (got[r] == want[r]) as usize;
                }
                // The expansion cannot separate codewords closer than ~1e-7·‖e‖², which a dense
                // low-dimensional codebook has; with D ≥ 8 the nearest is well separated.
                if direct || d >= 8 {
                    assert!(
                        same >= t - 2,
                        "{name}: only {same}/{t} identical (n={n} d={d})"
                    );
                }
            }
        }
    }

    /// A cached tree follows its codebook: every codeword moves each call and a few jump far
    /// (as a dead-code restart does), and the answers stay the brute force's, ties included,
    /// while the tree is refitted on most calls rather than rebuilt; a codebook of another
    /// shape gets a new tree.
    #[test]
    fn refitted_kdtree_stays_exact() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for &(n, d) in &[(700usize, 2usize), (300, 4), (50, 3)] {
            let cache = SearchCache::default();
            let mut e = ints(&mut rng, n * d, -20, 20);
            let calls = 16;
            for call in 0..calls {
                let x = ints(&mut rng, 257 * d, -22, 22);
                let want = nearest_brute_force(&x, &e, d);
                let got = nearest_kdtree_cached(&x, &e, d, &cache);
                assert_eq!(got, want, "n={n} d={d} call {call}");
                for v in e.iter_mut() {
                    *v += rng.random_range(-1..=1) as f32;
                }
                if call % 5 == 4 {
                    for _ in 0..5 {
                        let j = rng.random_range(0..n);
                        for k in 0..d {
                            e[j * d + k] = rng.random_range(-40..=40) as f32;
                        }
                    }
                }
            }
            let builds = cache.kd.lock().unwrap().builds;
            assert!(
                (1..calls as u64 / 2).contains(&builds),
                "n={n} d={d}: {builds} builds in {calls} calls"
            );
            let half = &e[..n / 2 * d];
            let x = ints(&mut rng, 99 * d, -22, 22);
            let want = nearest_brute_force(&x, half, d);
            assert_eq!(nearest_kdtree_cached(&x, half, d, &cache), want);
            assert_eq!(cache.kd.lock().unwrap().builds, builds + 1);
        }
    }

    /// −0.0 and +0.0 are one point: the lowest index wins, as in the brute force.
    #[test]
    fn signed_zeros_tie_to_the_lowest_index() {
        let e = [0.0f32, -0.0, 1.0];
        let x = [0.0f32, -0.0, 0.4];
        assert_eq!(nearest_sorted_1d(&x, &e), nearest_brute_force(&x, &e, 1));
        assert_eq!(nearest_sorted_1d(&x, &e), vec![0, 0, 0]);
        let e = [-0.0f32, 0.0];
        assert_eq!(nearest_sorted_1d(&[0.0], &e), vec![0]);
    }

    #[test]
    fn empty_and_mismatched_inputs() {
        let x = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let e = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
        let err = nearest(&x, &e, SearchMethod::Auto).unwrap_err();
        assert!(err.to_string().contains("differs"), "{err}");
        let e1 = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
        let err = nearest(&x, &e1, SearchMethod::Sorted).unwrap_err();
        assert!(err.to_string().contains("D = 1"), "{err}");
    }
}
