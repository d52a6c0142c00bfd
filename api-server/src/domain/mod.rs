//! User input parsed into types that cannot hold invalid values.

mod email;
pub mod timestamp;
mod user;
mod user_name;

pub use email::Email;
pub use user::{FieldError, NewUser, User, UserBody, UserPatch};
pub use user_name::UserName;
