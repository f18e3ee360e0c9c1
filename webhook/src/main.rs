fn main() -> std::process::ExitCode {
    webhook::main()
}
