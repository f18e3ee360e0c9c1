fn main() { elector::main() }
