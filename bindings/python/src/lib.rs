//! `mirante._mirante`: the extension module under the `mirante` Python package. It holds the
//! engine's calls; the package (`python/mirante/`) turns them into the Pythonic API (PIL and
//! numpy in, pandas and polars out).
//!
//! Every call that can take time runs on a worker thread with the GIL released, while the
//! calling thread waits in slices and checks for signals: Ctrl-C (KeyboardInterrupt) raises the
//! statement's cancel token, the statement stops at its next check with nothing half-committed,
//! and the KeyboardInterrupt propagates.

mod errors;
mod output;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::ffi_stream::RecordBatchStreamReader;
use arrow::pyarrow::PyArrowType;
use mirante::query::options::{EmbeddingColumns, ImportOptions};
use mirante::storage::Modality;
use mirante::training::ImageSource;
use mirante::{
    Database, EmbeddingVectors, ExecOptions, Options, Progress, ProgressBoard, TaskState,
};
use numpy::{PyArray1, PyArray2, ToPyArray};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::errors::to_py;
use crate::output::PyOutput;

/// How often a waiting call looks for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// How one call into the engine runs: its statement options, the text its errors are rendered
/// against (with a caret under the position), and the progress drawer, a Python object whose
/// `update(tasks)` and `close()` draw the call's progress board (the package's tqdm bars).
struct Call<'a> {
    exec: ExecOptions,
    statement: Option<&'a str>,
    progress: Option<&'a Py<PyAny>>,
    /// Work bounded to milliseconds (a search without re-ranking): it runs on the calling
    /// thread, with the GIL released but no signal checks, sparing a thread hand-off that
    /// would cost as much as the engine's own overhead.
    quick: bool,
}

impl Call<'_> {
    fn plain() -> Self {
        Call {
            exec: ExecOptions::default(),
            statement: None,
            progress: None,
            quick: false,
        }
    }

    fn quick(self, quick: bool) -> Self {
        Call { quick, ..self }
    }
}

/// Runs `work` on a worker thread without the GIL. The calling thread waits in slices: it
/// draws the progress board and checks for signals; KeyboardInterrupt (or another signal's
/// exception) cancels the work and is raised once the work has stopped.
fn run<T: Send>(
    py: Python<'_>,
    call: Call<'_>,
    work: impl FnOnce(&ExecOptions) -> mirante::Result<T> + Send,
) -> PyResult<T> {
    let Call {
        mut exec,
        statement,
        progress,
        quick,
    } = call;
    if quick {
        return py
            .detach(|| work(&exec))
            .map_err(|e| to_py(py, &e, statement));
    }
    let mut drawer = progress.map(|factory| Drawer::new(factory, &mut exec));
    let cancel = exec.cancel.clone();
    let result = std::thread::scope(|s| {
        let (tx, rx) = crossbeam_channel::bounded(1);
        s.spawn(move || {
            // The receiver is gone only when the caller stopped waiting: nothing to report.
            let _ = tx.send(work(&exec));
        });
        let mut interrupted: Option<PyErr> = None;
        loop {
            match py.detach(|| rx.recv_timeout(SIGNAL_CHECK)) {
                Ok(result) => {
                    return match (result, interrupted) {
                        (Err(mirante::Error::Cancelled), Some(signal)) => Err(signal),
                        (result, _) => result.map_err(|e| to_py(py, &e, statement)),
                    };
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if let Some(d) = drawer.as_mut() {
                        d.draw(py);
                    }
                    if interrupted.is_none()
                        && let Err(signal) = py.check_signals()
                    {
                        cancel.cancel();
                        interrupted = Some(signal);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(pyo3::exceptions::PyRuntimeError::new_err(
                        "the statement's worker thread ended without a result",
                    ));
                }
            }
        }
    });
    if let Some(d) = drawer {
        d.close(py);
    }
    result
}

/// Draws one call's progress board through the package's drawer, made when the first job
/// starts (a call that ends within one slice draws nothing). A drawer that fails (no tqdm, a
/// closed stream) only loses the bars: the statement goes on.
struct Drawer<'a> {
    factory: &'a Py<PyAny>,
    board: ProgressBoard,
    drawn: Option<Py<PyAny>>,
    last: Vec<TaskState>,
}

impl<'a> Drawer<'a> {
    fn new(factory: &'a Py<PyAny>, exec: &mut ExecOptions) -> Self {
        let board = ProgressBoard::default();
        exec.progress = Progress::Watched(board.clone());
        Drawer {
            factory,
            board,
            drawn: None,
            last: Vec::new(),
        }
    }

    fn draw(&mut self, py: Python<'_>) {
        let tasks = self.board.tasks();
        if tasks == self.last {
            return;
        }
        let rows: Vec<_> = tasks
            .iter()
            .map(|t| {
                (
                    t.what.as_str(),
                    t.position,
                    t.length,
                    t.message.as_str(),
                    t.finished,
                )
            })
            .collect();
        if self.drawn.is_none() {
            self.drawn = self.factory.call0(py).ok();
        }
        if let Some(d) = &self.drawn {
            let _ = d.call_method1(py, "update", (rows,));
        }
        self.last = tasks;
    }

    fn close(mut self, py: Python<'_>) {
        if self.drawn.is_some() {
            self.draw(py);
        }
        if let Some(d) = &self.drawn {
            let _ = d.call_method0(py, "close");
        }
    }
}

/// An open database (`mirante.connect` returns the package's wrapper of it).
#[pyclass(module = "mirante._mirante", name = "Database", frozen)]
#[derive(Debug)]
struct PyDatabase {
    db: Arc<Database>,
    /// Makes a progress drawer per call (`None`: no progress shown).
    progress: Option<Py<PyAny>>,
}

/// An image for `embed_images` or a search: a path, or encoded bytes with a name.
fn image_source(item: &Bound<'_, PyAny>, index: usize) -> PyResult<ImageSource> {
    if let Ok(bytes) = item.cast::<PyBytes>() {
        return Ok(ImageSource::Bytes {
            source: format!("image {}", index + 1),
            bytes: bytes.as_bytes().to_vec(),
        });
    }
    if let Ok(path) = item.extract::<PathBuf>() {
        return Ok(ImageSource::Path(path));
    }
    Err(PyValueError::new_err(format!(
        "image {} is a {}; expected a path or encoded bytes (PNG, JPEG, ...)",
        index + 1,
        item.get_type().name()?
    )))
}

/// Rows of vectors as a float32 array.
fn matrix<'py>(py: Python<'py>, rows: Vec<Vec<f32>>, dim: usize) -> Bound<'py, PyArray2<f32>> {
    let n = rows.len();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    let array = numpy::ndarray::Array2::from_shape_vec((n, dim), flat)
        .unwrap_or_else(|_| numpy::ndarray::Array2::zeros((0, dim)));
    array.to_pyarray(py)
}

#[pymethods]
impl PyDatabase {
    #[new]
    /// `progress`: a callable returning an object with `update(tasks)` and `close()` that
    /// draws a call's progress (each task: what, position, length or None, message,
    /// finished); `None` shows none.
    #[pyo3(signature = (path, *, device=None, progress=None, busy_timeout=5.0, allowed_paths=None, downloads=true, read_only=false))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        py: Python<'_>,
        path: PathBuf,
        device: Option<String>,
        progress: Option<Py<PyAny>>,
        busy_timeout: f64,
        allowed_paths: Option<Vec<PathBuf>>,
        downloads: bool,
        read_only: bool,
    ) -> PyResult<Self> {
        let device = mirante::training::select_device(device.as_deref())
            .map_err(|e| to_py(py, &mirante::Error::from(e), None))?;
        let busy_timeout = std::time::Duration::try_from_secs_f64(busy_timeout).map_err(|e| {
            pyo3::exceptions::PyValueError::new_err(format!("busy_timeout {busy_timeout}: {e}"))
        })?;
        let mut access = match allowed_paths {
            Some(roots) => mirante::Access::confined(roots).map_err(|e| to_py(py, &e, None))?,
            None => mirante::Access::default(),
        };
        access.downloads &= downloads;
        let options = Options {
            device,
            busy_timeout,
            access,
            read_only,
            ..Options::default()
        };
        let db = run(py, Call::plain(), move |_| {
            Database::open_with(&path, options)
        })?;
        Ok(PyDatabase {
            db: Arc::new(db),
            progress,
        })
    }

    /// The database's folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.db.path().to_path_buf()
    }

    /// What is wrong with the database (a damaged newer version shown as an older one), one
    /// message each; empty when healthy.
    fn warnings(&self) -> Vec<String> {
        self.db.warnings()
    }

    /// Runs `;`-separated statements; one output per statement.
    #[pyo3(signature = (script, *, image_bytes=false))]
    fn sql(&self, py: Python<'_>, script: &str, image_bytes: bool) -> PyResult<Vec<PyOutput>> {
        let db = Arc::clone(&self.db);
        let text = script.to_string();
        let exec = ExecOptions {
            image_bytes,
            ..ExecOptions::default()
        };
        let outputs = run(py, self.call(exec, Some(script)), move |exec| {
            let mut out = Vec::new();
            db.sql_each(&text, exec, |o| out.push(o))?;
            Ok(out)
        })?;
        Ok(outputs.into_iter().map(PyOutput::new).collect())
    }

    /// The names of the collections.
    fn collections(&self) -> PyResult<Vec<String>> {
        let snap = self.db.snapshot().map_err(|e| to_py_now(&e))?;
        Ok(snap.collections().iter().map(|c| c.name.clone()).collect())
    }

    /// Adds the rows of an Arrow stream (anything with `__arrow_c_stream__`: a pyarrow Table or
    /// RecordBatchReader, ...) to `collection` in one commit; returns the new ids and the rows
    /// skipped (location, image, reason). `replace` is a WHERE predicate whose rows the same
    /// commit deletes.
    #[pyo3(signature = (collection, data, *, skip_errors=false, image_column=None, text_column=None, split=None, columns=None, limit=None, embeddings=None, replace=None))]
    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        py: Python<'_>,
        collection: String,
        data: PyArrowType<RecordBatchStreamReader>,
        skip_errors: bool,
        image_column: Option<String>,
        text_column: Option<String>,
        split: Option<String>,
        columns: Option<Vec<String>>,
        limit: Option<usize>,
        embeddings: Option<(String, String, String)>,
        replace: Option<String>,
    ) -> PyResult<(Vec<u64>, Vec<Skipped>)> {
        let reader = data.0;
        let options = import_options(
            (image_column, text_column, split),
            columns,
            limit,
            embeddings,
        );
        let db = Arc::clone(&self.db);
        let report = run(py, self.call(ExecOptions::default(), None), move |exec| {
            let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
            let source = mirante::ingest::from_arrow(&schema, reader, &options)?;
            db.collection(&collection)?.add_replacing(
                source,
                &options,
                skip_errors,
                replace.as_deref(),
                exec,
            )
        })?;
        if let Some(merge) = &report.merge_error {
            warn_runtime(py, merge)?;
        }
        let skipped = report
            .skipped
            .into_iter()
            .map(|f| (f.location, f.image, f.reason))
            .collect();
        Ok((report.ids, skipped))
    }

    /// Builds segments of `collection` from `data` without the writer lock, the first phase
    /// of a two-phase write; returns the segments' description (bytes for `publish`), the ids
    /// the rows will have and the rows skipped.
    #[pyo3(signature = (collection, data, *, expected_rows, skip_errors=false, image_column=None, text_column=None, split=None, columns=None, embeddings=None))]
    #[allow(clippy::too_many_arguments)]
    fn build_segments<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        data: PyArrowType<RecordBatchStreamReader>,
        expected_rows: u64,
        skip_errors: bool,
        image_column: Option<String>,
        text_column: Option<String>,
        split: Option<String>,
        columns: Option<Vec<String>>,
        embeddings: Option<(String, String, String)>,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<u64>, Vec<Skipped>)> {
        let reader = data.0;
        let options = import_options(
            (image_column, text_column, split),
            columns,
            None,
            embeddings,
        );
        let db = Arc::clone(&self.db);
        let report = run(py, self.call(ExecOptions::default(), None), move |exec| {
            let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
            let source = mirante::ingest::from_arrow(&schema, reader, &options)?;
            db.collection(&collection)?.build_segments(
                source,
                &options,
                skip_errors,
                expected_rows,
                exec,
            )
        })?;
        let skipped = report
            .skipped
            .into_iter()
            .map(|f| (f.location, f.image, f.reason))
            .collect();
        Ok((
            PyBytes::new(py, &report.built.to_bytes()),
            report.ids,
            skipped,
        ))
    }

    /// Publishes segments described by `build_segments` (from any process) in one commit;
    /// returns the version and the rows published, and warns when the merge after it failed.
    fn publish(&self, py: Python<'_>, built: Vec<Vec<u8>>) -> PyResult<(u64, u64)> {
        let built = built
            .iter()
            .map(|b| mirante::storage::BuiltSegments::from_bytes(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| to_py_now(&e.into()))?;
        let db = Arc::clone(&self.db);
        let report = run(py, self.call(ExecOptions::default(), None), move |_| {
            db.publish(&built)
        })?;
        if let Some(merge) = &report.merge_error {
            warn_runtime(py, merge)?;
        }
        Ok((report.version, report.rows))
    }

    /// Distributed EMBED, first phase: registers `model`'s spaces in `collection` and returns
    /// the segments lacking its vectors.
    fn prepare_embedding(
        &self,
        py: Python<'_>,
        collection: String,
        model: String,
    ) -> PyResult<Vec<u64>> {
        let db = Arc::clone(&self.db);
        run(py, self.call(ExecOptions::default(), None), move |_| {
            db.collection(&collection)?.prepare_embedding(&model)
        })
    }

    /// Distributed EMBED, second phase: embeds `segments` with `model` without the writer
    /// lock; returns the columns' descriptions.
    fn embed_segments<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        model: String,
        segments: Vec<u64>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let db = Arc::clone(&self.db);
        let built = run(py, self.call(ExecOptions::default(), None), move |exec| {
            db.collection(&collection)?
                .embed_segments(&model, &segments, exec)
        })?;
        Ok(built
            .iter()
            .map(|b| PyBytes::new(py, &b.to_bytes()))
            .collect())
    }

    /// Distributed EMBED, last phase: attaches the columns in one commit, embeds what they do
    /// not cover, and with `switch` searches with `model`; returns the status.
    fn publish_embedding(
        &self,
        py: Python<'_>,
        collection: String,
        model: String,
        built: Vec<Vec<u8>>,
        switch: bool,
    ) -> PyResult<String> {
        let built = built
            .iter()
            .map(|b| mirante::storage::BuiltColumns::from_bytes(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| to_py_now(&e.into()))?;
        let db = Arc::clone(&self.db);
        run(py, self.call(ExecOptions::default(), None), move |exec| {
            db.collection(&collection)?
                .publish_embedding(&model, &built, switch, exec)
        })
    }

    /// A search of `collection` by `query` (`kind`: text, image, image_bytes, row or vector).
    #[pyo3(signature = (collection, kind, query, *, r#where=None, limit=10, model=None, rerank=None, top=None, match_=None, image_bytes=false))]
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        py: Python<'_>,
        collection: String,
        kind: &str,
        query: &Bound<'_, PyAny>,
        r#where: Option<String>,
        limit: usize,
        model: Option<String>,
        rerank: Option<String>,
        top: Option<usize>,
        match_: Option<String>,
        image_bytes: bool,
    ) -> PyResult<PyOutput> {
        let query = match kind {
            "text" => Query::Text(query.extract()?),
            "image" => Query::Image(query.extract::<PathBuf>()?.display().to_string()),
            "image_bytes" => Query::ImageBytes(query.cast::<PyBytes>()?.as_bytes().to_vec()),
            "row" => Query::Row(query.extract()?),
            "vector" => Query::Vector(query.extract()?),
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown query kind '{other}'; kinds: text, image, image_bytes, row, vector"
                )));
            }
        };
        let target = match match_.as_deref() {
            None => None,
            Some("images") => Some(true),
            Some("texts") => Some(false),
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "match is 'images' or 'texts', got '{other}'"
                )));
            }
        };
        let db = Arc::clone(&self.db);
        let exec = ExecOptions {
            image_bytes,
            ..ExecOptions::default()
        };
        let quick = rerank.is_none();
        let results = run(py, self.call(exec, None).quick(quick), move |exec| {
            let c = db.collection(&collection)?;
            let mut s = match query {
                Query::Text(t) => c.search_text(&t),
                Query::Image(p) => c.search_image(&p),
                Query::ImageBytes(b) => c.search_image_bytes(b),
                Query::Row(id) => c.search_row(id),
                Query::Vector(v) => c.search_vector(v),
            }
            .limit(limit)
            .cancel_with(&exec.cancel);
            s = match target {
                Some(true) => s.match_images(),
                Some(false) => s.match_texts(),
                None => s,
            };
            if let Some(w) = &r#where {
                s = s.filter(w);
            }
            if let Some(m) = &model {
                s = s.model(m);
            }
            if let Some(e) = &rerank {
                s = s.rerank(
                    e,
                    top.unwrap_or(mirante::query::DEFAULT_RERANK_TOP as usize),
                );
            }
            if exec.image_bytes {
                s = s.with_image_bytes();
            }
            s.run()
        })?;
        Ok(PyOutput::new(mirante::Output::Search(results)))
    }

    /// The stored image vectors of rows `ids`: float32 rows in the order of `ids` (zeros for a
    /// row that is not live) and, per id, whether it is live.
    #[pyo3(signature = (collection, ids, *, model=None))]
    fn image_vectors<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        ids: Vec<u64>,
        model: Option<String>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Vec<bool>)> {
        let db = Arc::clone(&self.db);
        let found = run(py, Call::plain(), move |_| {
            db.collection(&collection)?
                .image_vectors(&ids, model.as_deref())
        })?;
        let dim = found.iter().flatten().map(Vec::len).next().unwrap_or(0);
        let live = found.iter().map(Option::is_some).collect();
        let rows = found
            .into_iter()
            .map(|v| v.unwrap_or_else(|| vec![0.0; dim]))
            .collect();
        Ok((matrix(py, rows, dim), live))
    }

    /// The model id of `collection`'s active spaces (None without a model).
    fn collection_model(&self, py: Python<'_>, collection: String) -> PyResult<Option<String>> {
        let db = Arc::clone(&self.db);
        run(py, Call::plain(), move |_| {
            db.collection(&collection)?.model()
        })
    }

    /// Embeddings of texts, float32 rows, L2-normalised.
    #[pyo3(signature = (texts, *, model=None))]
    fn embed_texts<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        model: Option<String>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let db = Arc::clone(&self.db);
        let (rows, dim) = run(py, self.call(ExecOptions::default(), None), move |exec| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let rows = db.embed_texts(&refs, model.as_deref(), exec)?;
            let dim = db.model(model.as_deref())?.dim();
            Ok((rows, dim))
        })?;
        Ok(matrix(py, rows, dim))
    }

    /// Embeddings of images (paths or encoded bytes), float32 rows, L2-normalised.
    #[pyo3(signature = (images, *, model=None))]
    fn embed_images<'py>(
        &self,
        py: Python<'py>,
        images: Vec<Bound<'py, PyAny>>,
        model: Option<String>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let sources = images
            .iter()
            .enumerate()
            .map(|(i, item)| image_source(item, i))
            .collect::<PyResult<Vec<_>>>()?;
        let db = Arc::clone(&self.db);
        let (rows, dim) = run(py, self.call(ExecOptions::default(), None), move |exec| {
            let rows = db.embed_images(&sources, model.as_deref(), exec)?;
            let dim = db.model(model.as_deref())?.dim();
            Ok((rows, dim))
        })?;
        Ok(matrix(py, rows, dim))
    }

    /// A collection's stored vectors of one kind (`image` or `text`), of its active model or
    /// `model`: the row ids (and for text each caption's position), and a float32 array that
    /// reads the memory-mapped column in place when the collection is one segment without
    /// deleted rows (a copy otherwise). The array is read-only.
    #[pyo3(signature = (collection, *, kind="image", model=None))]
    fn embeddings<'py>(
        &self,
        py: Python<'py>,
        collection: String,
        kind: &str,
        model: Option<String>,
    ) -> PyResult<EmbeddingsTuple<'py>> {
        let modality = match kind {
            "image" => Modality::Image,
            "text" => Modality::Text,
            other => {
                return Err(PyValueError::new_err(format!(
                    "kind is 'image' or 'text', got '{other}'"
                )));
            }
        };
        let db = Arc::clone(&self.db);
        let embeddings = run(py, Call::plain(), move |_| {
            db.collection(&collection)?
                .embeddings(model.as_deref(), modality)
        })?;
        let ids = embeddings.ids.to_pyarray(py);
        let captions = embeddings.captions.as_ref().map(|c| c.to_pyarray(py));
        let mapped = matches!(embeddings.vectors, EmbeddingVectors::Mapped(_));
        let shape = (embeddings.ids.len(), embeddings.dim);
        let holder = Bound::new(py, StoredVectors { embeddings })?;
        let vectors = {
            let view =
                numpy::ndarray::ArrayView2::from_shape(shape, holder.get().embeddings.as_slice())
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
            // SAFETY: the array borrows the values of `holder`, which becomes the array's base
            // object and so lives as long as the array; the values are never written (a mapped
            // column is a read-only mapping), and the array is made read-only below.
            unsafe { PyArray2::borrow_from_array(&view, holder.clone().into_any()) }
        };
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("write", false)?;
        vectors.call_method("setflags", (), Some(&kwargs))?;
        Ok((ids, captions, vectors, mapped))
    }

    fn __repr__(&self) -> String {
        format!("Database('{}')", self.db.path().display())
    }
}

impl PyDatabase {
    /// A call with this database's progress drawer.
    fn call<'a>(&'a self, exec: ExecOptions, statement: Option<&'a str>) -> Call<'a> {
        Call {
            exec,
            statement,
            progress: self.progress.as_ref(),
            quick: false,
        }
    }
}

/// Row ids, caption positions (text), vectors, and whether the vectors are mapped in place.
type EmbeddingsTuple<'py> = (
    Bound<'py, PyArray1<u64>>,
    Option<Bound<'py, PyArray1<u32>>>,
    Bound<'py, PyArray2<f32>>,
    bool,
);

/// Keeps stored vectors (a mapped column, or a gathered copy) alive under a numpy array.
#[pyclass(module = "mirante._mirante", frozen)]
#[derive(Debug)]
struct StoredVectors {
    embeddings: mirante::Embeddings,
}

/// A row `add` left out: location, image, reason.
type Skipped = (String, Option<String>, String);

/// A search query as the Python side gives it.
enum Query {
    Text(String),
    Image(String),
    ImageBytes(Vec<u8>),
    Row(u64),
    Vector(Vec<f32>),
}

/// Issues `message` as a Python `RuntimeWarning` pointing at the caller's caller.
fn warn_runtime(py: Python<'_>, message: &str) -> PyResult<()> {
    let message = std::ffi::CString::new(message.replace('\0', " "))
        .unwrap_or_else(|_| c"merging segments failed".into());
    PyErr::warn(
        py,
        &py.get_type::<pyo3::exceptions::PyRuntimeWarning>(),
        &message,
        2,
    )
}

/// The import options of `add` and `build_segments`.
fn import_options(
    (image_column, text_column, split): (Option<String>, Option<String>, Option<String>),
    columns: Option<Vec<String>>,
    limit: Option<usize>,
    embeddings: Option<(String, String, String)>,
) -> ImportOptions {
    ImportOptions {
        image_column,
        text_column,
        split,
        columns,
        limit,
        embeddings: embeddings.map(|(image, text, model)| EmbeddingColumns { image, text, model }),
    }
}

/// An error raised outside `run` (quick calls that never wait).
fn to_py_now(e: &mirante::Error) -> PyErr {
    Python::attach(|py| to_py(py, e, None))
}

#[pymodule]
fn _mirante(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDatabase>()?;
    m.add_class::<PyOutput>()?;
    m.add(
        "__version__",
        PyString::new(m.py(), env!("CARGO_PKG_VERSION")),
    )?;
    errors::register(m)?;
    Ok(())
}
