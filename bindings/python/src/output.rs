//! `Output`: one statement's result as the extension hands it to Python: its kind, status
//! line and columns, an Arrow table (pyarrow), and the Arrow PyCapsule stream interface, so
//! pyarrow, polars and duckdb read it without copies through Python.

use arrow::array::RecordBatchIterator;
use arrow::ffi_stream::FFI_ArrowArrayStream;
use arrow::pyarrow::{IntoPyArrow, ToPyArrow};
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use mirante::{Output, TableStyle};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::errors::to_py;

/// One statement's result.
#[pyclass(module = "mirante._mirante", name = "Output", frozen)]
#[derive(Debug)]
pub struct PyOutput {
    output: Output,
}

impl PyOutput {
    pub fn new(output: Output) -> Self {
        PyOutput { output }
    }

    fn batch(&self, py: Python<'_>) -> PyResult<RecordBatch> {
        self.output.to_arrow().map_err(|e| to_py(py, &e, None))
    }

    fn reader(&self, py: Python<'_>) -> PyResult<Box<dyn RecordBatchReader + Send>> {
        let batch = self.batch(py)?;
        let schema = batch.schema();
        Ok(Box::new(RecordBatchIterator::new(vec![Ok(batch)], schema)))
    }
}

#[pymethods]
impl PyOutput {
    /// `status`, `table`, `search`, `evaluation` or `training`.
    #[getter]
    fn kind(&self) -> &'static str {
        match &self.output {
            Output::Status(_) => "status",
            Output::Table(_) => "table",
            Output::Search(_) => "search",
            Output::Evaluation(_) => "evaluation",
            Output::Training(_) => "training",
        }
    }

    /// The status line ("imported 7 rows into images"), if the statement has one.
    #[getter]
    fn status(&self) -> Option<String> {
        self.output.status()
    }

    /// The column names, as `to_arrow` has them (none for a status alone).
    #[getter]
    fn columns(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        if let Output::Status(_) = &self.output {
            return Ok(Vec::new());
        }
        let batch = self.batch(py)?;
        Ok(batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect())
    }

    /// Where a search's time went, in seconds (`embed`, `search`, `rerank`, `fetch`); `None`
    /// for other statements.
    #[getter]
    fn timings(&self) -> Option<std::collections::BTreeMap<&'static str, f64>> {
        let Output::Search(s) = &self.output else {
            return None;
        };
        let t = &s.timings;
        Some(std::collections::BTreeMap::from([
            ("embed", t.embed.as_secs_f64()),
            ("search", t.search.as_secs_f64()),
            ("rerank", t.rerank.as_secs_f64()),
            ("fetch", t.fetch.as_secs_f64()),
        ]))
    }

    fn __len__(&self) -> usize {
        self.output.len()
    }

    /// The result as a `pyarrow.Table` (typed by the statement and the collection; a status
    /// alone is a one-row `status` column).
    fn to_arrow<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let batch = self.batch(py)?;
        let pa = py.import("pyarrow")?;
        let batches = vec![batch.to_pyarrow(py)?];
        pa.getattr("Table")?
            .call_method1("from_batches", (batches,))
    }

    /// The result as a `pyarrow.RecordBatchReader`.
    fn to_reader<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.reader(py)?.into_pyarrow(py)
    }

    /// The Arrow PyCapsule stream interface.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // The schema is the result's own; a consumer asking for another one casts after reading.
        let _ = requested_schema;
        let stream = FFI_ArrowArrayStream::new(self.reader(py)?);
        PyCapsule::new_with_value(py, stream, c"arrow_array_stream")
    }

    /// The whole table as text, as `mirante sql` prints it.
    fn to_table(&self) -> String {
        self.output.to_result_set().to_table()
    }

    /// The table fitted to `width` columns, as the shell prints it in a terminal.
    #[pyo3(signature = (width=120))]
    fn to_fitted(&self, width: usize) -> String {
        self.output.display_set().to_table_fitted(&TableStyle {
            width: Some(width),
            ..TableStyle::default()
        })
    }

    fn __repr__(&self) -> String {
        self.to_fitted(120)
    }
}
