fn main() -> std::process::ExitCode {
    umbra_stream::service::main(umbra_rebalancer::NAME, umbra_rebalancer::run)
}
