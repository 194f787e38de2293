fn main() -> std::process::ExitCode {
    umbra_stream::service::main(umbra_fleet::NAME, umbra_fleet::run)
}
