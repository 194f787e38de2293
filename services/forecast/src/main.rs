fn main() -> std::process::ExitCode {
    umbra_stream::service::main(umbra_forecast::NAME, umbra_forecast::run)
}
