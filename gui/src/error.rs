//! Why something the explorer asked for is not there. Errors end up as text on screen, so they
//! are kept as messages (and can be cloned into the views' state).

use saescope_store::StoreError;

/// What went wrong behind a view.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExploreError {
    /// A file of the run, dictionary or feature store could not be read.
    #[error("{0}")]
    Read(String),
    /// The loading was cancelled (another run or dictionary was chosen).
    #[error("cancelled")]
    Cancelled,
    /// A background thread stopped or failed.
    #[error("{0}")]
    Worker(String),
    /// The prompt engine (the model and dictionary) failed.
    #[error("{0}")]
    Engine(String),
    /// The window could not open.
    #[error("cannot open the explorer window: {0}")]
    Window(String),
}

impl From<StoreError> for ExploreError {
    fn from(e: StoreError) -> Self {
        ExploreError::Read(e.to_string())
    }
}

/// The text a panic was raised with, when it carried one (`panic!` with a message does).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}
