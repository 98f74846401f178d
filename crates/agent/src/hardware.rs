//! Hardware managers: a trait with support levels and dispatch to the best manager that implements an operation.
