fn main() -> std::process::ExitCode {
    umbra_stream::service::main(umbra_interceptor::NAME, umbra_interceptor::run)
}
