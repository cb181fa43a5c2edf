use kube::CustomResourceExt;
fn main() {
    print!("{}", serde_yaml::to_string(&scaledapp_operator::crd::ScaledApp::crd()).expect("yaml"));
}
