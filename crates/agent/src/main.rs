fn main() {
    eprintln!("ferric-agent: not yet runnable");
    std::process::exit(2);
}
