//! The package's exceptions: `mirante.Error` and a subclass per kind of failure, with the
//! messages the CLI prints (query errors with the statement line and a caret).

use mirante::ErrorKind;
use mirante::storage::Error as StorageError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    mirante,
    Error,
    PyException,
    "Base class of Mirante's errors; `str(e)` is the message the CLI prints."
);
create_exception!(
    mirante,
    QueryError,
    Error,
    "A statement that does not parse or bind; `line` and `column` say where (1-based)."
);
create_exception!(
    mirante,
    NotFoundError,
    Error,
    "A collection, row or model that does not exist."
);
create_exception!(
    mirante,
    InvalidInputError,
    Error,
    "A request that cannot run on this database as it is; the message says what to change."
);
create_exception!(
    mirante,
    RowsFailedError,
    InvalidInputError,
    "Rows of an add or import that could not be used; nothing was committed. `failures` lists \
     (location, image, reason)."
);
create_exception!(
    mirante,
    LockedError,
    Error,
    "Another process holds the database's writer lock."
);
create_exception!(
    mirante,
    ConflictError,
    LockedError,
    "Another writer of a database on object storage committed first; nothing was committed, \
     and running the call again lands on top of the other's commit."
);
create_exception!(
    mirante,
    CorruptionError,
    Error,
    "A file of the database is damaged; the message names it."
);
create_exception!(
    mirante,
    DataError,
    Error,
    "A file could not be read or written (I/O, missing weights, a FAISS failure)."
);
create_exception!(
    mirante,
    CancelledError,
    Error,
    "The statement was cancelled; nothing it did was committed."
);
create_exception!(mirante, InternalError, Error, "A bug in Mirante.");

/// Adds the exceptions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("QueryError", py.get_type::<QueryError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("RowsFailedError", py.get_type::<RowsFailedError>())?;
    m.add("LockedError", py.get_type::<LockedError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("CorruptionError", py.get_type::<CorruptionError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("CancelledError", py.get_type::<CancelledError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}

/// The Python exception of an engine error; `statement` is the text it is rendered against.
pub fn to_py(py: Python<'_>, e: &mirante::Error, statement: Option<&str>) -> PyErr {
    let message = match statement {
        Some(s) => e.render(s),
        None => e.to_string(),
    };
    match e {
        mirante::Error::Query(q) => {
            let err = QueryError::new_err(message);
            let value = err.value(py);
            let pos = q.pos();
            // Setting attributes on a fresh exception instance cannot fail.
            let _ = value.setattr("line", pos.line);
            let _ = value.setattr("column", pos.column);
            err
        }
        mirante::Error::RowsFailed { failures, .. } => {
            let err = RowsFailedError::new_err(message);
            let list: Vec<(String, Option<String>, String)> = failures
                .iter()
                .map(|f| (f.location.clone(), f.image.clone(), f.reason.clone()))
                .collect();
            let _ = err.value(py).setattr("failures", list);
            err
        }
        mirante::Error::Storage(StorageError::Locked { .. }) => LockedError::new_err(message),
        mirante::Error::Storage(StorageError::Conflict { .. }) => ConflictError::new_err(message),
        mirante::Error::Storage(
            StorageError::Corruption { .. } | StorageError::DamagedNewerVersion { .. },
        )
        | mirante::Error::Corrupt { .. } => CorruptionError::new_err(message),
        mirante::Error::Storage(StorageError::NotFound { .. })
        | mirante::Error::UnknownModel { .. } => NotFoundError::new_err(message),
        other => match other.kind() {
            ErrorKind::Cancelled => CancelledError::new_err(message),
            ErrorKind::Internal => InternalError::new_err(message),
            ErrorKind::Data => DataError::new_err(message),
            ErrorKind::User => InvalidInputError::new_err(message),
        },
    }
}
