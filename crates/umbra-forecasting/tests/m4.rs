//! The metric code against the M4 competition's published figures: seasonal naive (m = 24) on
//! M4 Hourly scores sMAPE 13.912 and MASE 1.193.

use umbra_forecasting::data::{read_m4, shared_data_dir};
use umbra_forecasting::metrics::{mase, smape};
use umbra_forecasting::models::seasonal_naive;

#[test]
fn seasonal_naive_reproduces_m4_hourly_reference() {
    let dir = shared_data_dir().join("m4-hourly");
    let train = read_m4(&dir.join("Hourly-train.csv.gz")).expect("M4 train");
    let test = read_m4(&dir.join("Hourly-test.csv.gz")).expect("M4 test");
    assert_eq!(train.len(), 414);
    let (mut s, mut m) = (0.0, 0.0);
    for ((id, insample), (tid, actual)) in train.iter().zip(&test) {
        assert_eq!(id, tid);
        assert_eq!(actual.len(), 48);
        let f = seasonal_naive(insample, 24, 48).expect("forecast");
        s += smape(actual, &f);
        m += mase(actual, &f, insample, 24).expect("scale");
    }
    let (s, m) = (s / train.len() as f64, m / train.len() as f64);
    assert!((s - 13.912).abs() < 0.001, "sMAPE {s:.4}");
    assert!((m - 1.193).abs() < 0.001, "MASE {m:.4}");
}
