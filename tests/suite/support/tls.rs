//! Certificates made by the tests: a CA and what it signs, as PEM files.

/// A CA with its key, writing the certificates it signs into `dir`.
pub struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    dir: std::path::PathBuf,
}

impl TestCa {
    pub fn new(dir: &std::path::Path, name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        TestCa { params, key, dir: dir.to_owned() }
    }

    /// Writes `<file>.crt` and `<file>.key`: a certificate for `names` (the first also its
    /// common name); returns their paths.
    pub fn issue(&self, file: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0].as_str());
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (crt, pem) =
            (self.dir.join(format!("{file}.crt")), self.dir.join(format!("{file}.key")));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        (crt.display().to_string(), pem.display().to_string())
    }
}
