//! Operator step definitions: steps added without recompiling, each a command that receives its arguments as JSON on stdin.
