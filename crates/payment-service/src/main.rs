fn main() -> std::process::ExitCode {
    payment_service::main()
}
