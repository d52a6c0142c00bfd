mod cache;
mod errors;
mod faults;
mod health;
mod helpers;
mod services;
mod shutdown;
mod users;
