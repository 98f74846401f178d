// `sqlx::migrate!` embeds crates/store/migrations; rebuild when it changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
