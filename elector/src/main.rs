fn main() -> std::process::ExitCode {
    elector::main()
}
