fn main() -> std::process::ExitCode {
    umbra_stream::service::main(umbra_ingest::NAME, umbra_ingest::run)
}
