fn main() -> std::process::ExitCode {
    umbra_stream::service::main(
        umbra_k8s_agent::service::NAME,
        umbra_k8s_agent::service::run,
    )
}
