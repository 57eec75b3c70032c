//! Sparse codes in compressed-row form, and the sparse products every learner shares.
//!
//! A batch of codes is (cols, vals, offsets): row b's active latents are
//! `cols[offsets[b]..offsets[b+1]]` with values `vals[..]`. Decoding and every gradient that
//! touches the dictionary go through libtorch's embedding-bag kernels, so their cost grows with
//! the number of active latents (batch x k), never with batch x latents.

use tch::{Kind, Tensor};

/// Embedding-bag mode 0: sum each bag's rows, weighted by `per_sample_weights`.
const SUM: i64 = 0;

/// Sparse codes for a batch of `rows` inputs over `n_latents` latents.
#[derive(Debug)]
pub struct SparseCodes {
    /// Latent index of each active entry, i64 [nnz], grouped by row.
    pub cols: Tensor,
    /// Value of each active entry, f32 [nnz].
    pub vals: Tensor,
    /// Start of each row's entries, i64 [rows].
    pub offsets: Tensor,
    /// Number of rows (inputs) in the batch.
    pub rows: usize,
    /// Number of latents the indices in `cols` range over.
    pub n_latents: usize,
}

impl SparseCodes {
    /// Codes with exactly k entries a row, from top-k indices and values [rows, k].
    pub fn from_topk(idx: &Tensor, val: &Tensor, n_latents: usize) -> SparseCodes {
        let (rows, k) = idx.size2().expect("[rows, k] indices");
        SparseCodes {
            cols: idx.reshape([-1]),
            vals: val.reshape([-1]),
            offsets: Tensor::arange_start_step(0, rows * k, k.max(1), (Kind::Int64, idx.device())),
            rows: rows as usize,
            n_latents,
        }
    }

    /// The nonzero entries of a dense [rows, n] matrix, in row order.
    pub fn from_dense(dense: &Tensor) -> SparseCodes {
        let (rows, n) = dense.size2().expect("[rows, latents] codes");
        let nz = dense.nonzero(); // [nnz, 2], row-major order
        let (r, c) = (nz.select(1, 0), nz.select(1, 1));
        let vals = dense.index(&[Some(&r), Some(&c)]);
        SparseCodes::from_entries(&r, c, vals, rows, n)
    }

    /// Codes from each entry's row, column and value, the entries already in row order.
    pub fn from_entries(
        rows_of_entries: &Tensor,
        cols: Tensor,
        vals: Tensor,
        rows: i64,
        n_latents: i64,
    ) -> SparseCodes {
        SparseCodes {
            offsets: row_starts(rows_of_entries, rows),
            cols,
            vals,
            rows: rows as usize,
            n_latents: n_latents as usize,
        }
    }

    /// Active entries per row, i64 [rows].
    pub fn l0(&self) -> Tensor {
        let nnz = self.cols.size()[0];
        let ends = Tensor::cat(
            &[
                self.offsets.narrow(0, 1, self.rows as i64 - 1),
                // Made where the offsets are: a copy from host memory would wait for the GPU.
                Tensor::full([1], nnz, (Kind::Int64, self.offsets.device())),
            ],
            0,
        );
        ends - &self.offsets
    }

    /// Which latents hold a positive value in some row, bool [n_latents]. Counted rather than
    /// selected: the size of a masked selection is a read, which on a GPU waits for the queue.
    pub fn fired(&self) -> Tensor {
        let positive = self.vals.gt(0.0).to_kind(Kind::Int64);
        Tensor::zeros([self.n_latents as i64], (Kind::Int64, self.cols.device()))
            .index_add(0, &self.cols, &positive)
            .gt(0)
    }

    /// Row of each active entry, i64 [nnz].
    pub fn row_ids(&self) -> Tensor {
        Tensor::arange(self.rows as i64, (Kind::Int64, self.cols.device()))
            .repeat_interleave_self_tensor(&self.l0(), 0, self.cols.size()[0])
    }

    /// The codes as a dense [rows, n_latents] matrix (for small batches and tests).
    pub fn to_dense(&self) -> Tensor {
        let mut out = Tensor::zeros(
            [self.rows as i64, self.n_latents as i64],
            (self.vals.kind(), self.vals.device()),
        );
        let _ = out.index_put_(
            &[Some(self.row_ids()), Some(self.cols.shallow_clone())],
            &self.vals,
            true,
        );
        out
    }

    /// Σ_j vals_j · atoms[cols_j] for each row: [rows, d].
    pub fn combine(&self, atoms: &Tensor) -> Tensor {
        self.combine_with(atoms, &self.vals)
    }

    /// Σ_j w_j · atoms[cols_j] for each row, with weights `w` [nnz] in place of the values.
    pub fn combine_with(&self, atoms: &Tensor, w: &Tensor) -> Tensor {
        Tensor::embedding_bag(
            atoms,
            &self.cols,
            &self.offsets,
            false,
            SUM,
            false,
            Some(w),
            false,
        )
        .0
    }

    /// dL/dvals [nnz] of `combine(atoms)` given dL/dout [rows, d]: each entry's dot product of
    /// its row's gradient with its atom.
    pub fn dot_rows(&self, atoms: &Tensor, grad_out: &Tensor) -> Tensor {
        Tensor::internal_embedding_bag_per_sample_weights_backward(
            grad_out,
            atoms,
            &self.cols,
            &self.offsets,
            &self.row_ids(),
            SUM,
            -1,
        )
    }

    /// Σ over entries j of `w_j · x[row(j)]`, accumulated into row cols_j of an
    /// [n_latents, d] matrix: the gradient of an embedding bag's weight matrix.
    pub fn scatter_outer(&self, x: &Tensor, w: &Tensor) -> Tensor {
        Tensor::internal_embedding_bag_dense_backward(
            x,
            &self.cols,
            &self.row_ids(),
            &self.l0(),
            &Tensor::empty([0], (Kind::Int64, x.device())),
            self.n_latents as i64,
            false,
            SUM,
            Some(w),
            -1,
        )
    }

    /// Σ over entries of w_j into slot cols_j of an [n_latents] vector.
    pub fn scatter_sum(&self, w: &Tensor) -> Tensor {
        let mut out = Tensor::zeros([self.n_latents as i64], (w.kind(), w.device()));
        let _ = out.index_add_(0, &self.cols, w);
        out
    }
}

/// Start of each row's entries, given the row of every entry in row order.
pub fn row_starts(rows_of_entries: &Tensor, rows: i64) -> Tensor {
    let counts = rows_of_entries.bincount(None::<Tensor>, rows);
    counts.cumsum(0, Kind::Int64) - &counts
}
