fn main() -> std::process::ExitCode {
    umbra_stream::service::main(umbra_shadow_manager::NAME, umbra_shadow_manager::run)
}
