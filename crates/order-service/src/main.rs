fn main() -> std::process::ExitCode {
    order_service::main()
}
