fn main() { webhook::main() }
