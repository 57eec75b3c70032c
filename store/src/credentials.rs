//! Building an object store client from the environment, with credentials checked first.
//!
//! `object_store` would, lacking keys, fall back to a cloud's instance metadata service and fail
//! after a timeout with a message about HTTP. A user who forgot to export a variable should
//! instead be told which one. So each backend's usual sources are looked at here, in the order
//! its own tools use, and the client is built only when one is present. Values are never printed.

use crate::error::{Result, StoreError};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use std::path::PathBuf;
use std::sync::Arc;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn missing(url: &str, message: String) -> StoreError {
    StoreError::Credentials {
        url: url.to_owned(),
        message,
    }
}

/// The client for `scheme://bucket/…`.
pub(crate) fn build(scheme: &str, bucket: &str, url: &str) -> Result<Arc<dyn ObjectStore>> {
    let built = match scheme {
        "s3" | "s3a" => s3(bucket, url)?.build().map(|s| Arc::new(s) as _),
        "gs" => gcs(url)?
            .with_bucket_name(bucket)
            .build()
            .map(|s| Arc::new(s) as _),
        "az" | "abfs" => azure(url)?
            .with_container_name(bucket)
            .build()
            .map(|s| Arc::new(s) as _),
        other => {
            return Err(StoreError::Remote {
                url: url.to_owned(),
                message: format!(
                    "unknown scheme `{other}://`; saescope reads s3://, gs:// and az:// URLs"
                ),
            });
        }
    };
    built.map_err(|e| StoreError::Remote {
        url: url.to_owned(),
        message: e.to_string(),
    })
}

/// S3 and S3-compatible stores: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (with
/// `AWS_SESSION_TOKEN`), else a web-identity or container role, else a profile of
/// `~/.aws/credentials` (`AWS_PROFILE`, or `default`). `AWS_ENDPOINT_URL` points at another
/// S3-compatible server; `AWS_ALLOW_HTTP=true` allows plain HTTP to it.
fn s3(bucket: &str, url: &str) -> Result<AmazonS3Builder> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if env("AWS_REGION").is_none()
        && let Some(region) = env("AWS_DEFAULT_REGION")
    {
        b = b.with_region(region);
    }
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(_), Some(_)) => return Ok(b),
        (Some(_), None) => {
            return Err(missing(
                url,
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(missing(
                url,
                "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
            ));
        }
        (None, None) => {}
    }
    let role = [
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ];
    if role.iter().any(|v| env(v).is_some()) {
        return Ok(b);
    }
    if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        // Asked for explicitly: the instance's role, from its metadata service.
        return Ok(b);
    }
    let profile_name = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let home = env("HOME").map(PathBuf::from).unwrap_or_default();
    let cred_file = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws/credentials"));
    let config_file = env("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws/config"));
    let creds = ini::Ini::load_from_file(&cred_file).ok();
    let section = creds
        .as_ref()
        .and_then(|c| c.section(Some(profile_name.as_str())));
    let key = section.and_then(|s| s.get("aws_access_key_id"));
    let secret = section.and_then(|s| s.get("aws_secret_access_key"));
    match (key, secret) {
        (Some(k), Some(s)) => {
            b = b.with_access_key_id(k).with_secret_access_key(s);
            if env("AWS_SESSION_TOKEN").is_none()
                && let Some(t) = section.and_then(|s| s.get("aws_session_token"))
            {
                b = b.with_token(t);
            }
        }
        _ if env("AWS_PROFILE").is_some() => {
            return Err(missing(
                url,
                format!(
                    "AWS_PROFILE is `{profile_name}`, but {} has no aws_access_key_id and aws_secret_access_key for it",
                    cred_file.display()
                ),
            ));
        }
        _ => {
            return Err(missing(
                url,
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile in ~/.aws/credentials), or AWS_WEB_IDENTITY_TOKEN_FILE; on a cloud instance with a role, set AWS_EC2_METADATA_DISABLED=false to use it".into(),
            ));
        }
    }
    // The profile's region and endpoint, where the environment gives none.
    let config = ini::Ini::load_from_file(&config_file).ok();
    let config_section = if profile_name == "default" {
        "default".to_owned()
    } else {
        format!("profile {profile_name}")
    };
    if let Some(s) = config
        .as_ref()
        .and_then(|c| c.section(Some(config_section)))
    {
        if env("AWS_REGION").is_none()
            && env("AWS_DEFAULT_REGION").is_none()
            && let Some(r) = s.get("region")
        {
            b = b.with_region(r);
        }
        if env("AWS_ENDPOINT_URL").is_none()
            && let Some(e) = s.get("endpoint_url")
        {
            b = b.with_endpoint(e);
        }
    }
    Ok(b)
}

/// Google Cloud Storage: a service account (`GOOGLE_APPLICATION_CREDENTIALS`, or
/// `GOOGLE_SERVICE_ACCOUNT`/`_PATH`/`_KEY`), else gcloud's application-default credentials.
fn gcs(url: &str) -> Result<GoogleCloudStorageBuilder> {
    let mut b = GoogleCloudStorageBuilder::from_env();
    if let Some(path) = env("GOOGLE_APPLICATION_CREDENTIALS") {
        if !std::path::Path::new(&path).is_file() {
            return Err(missing(
                url,
                format!("GOOGLE_APPLICATION_CREDENTIALS names {path}, which is not a file"),
            ));
        }
        b = b.with_service_account_path(path);
        return Ok(b);
    }
    let named = [
        "GOOGLE_SERVICE_ACCOUNT",
        "GOOGLE_SERVICE_ACCOUNT_PATH",
        "GOOGLE_SERVICE_ACCOUNT_KEY",
    ];
    let home = env("HOME").map(PathBuf::from).unwrap_or_default();
    let adc = home.join(".config/gcloud/application_default_credentials.json");
    if named.iter().any(|v| env(v).is_some()) || adc.is_file() {
        return Ok(b);
    }
    Err(missing(
        url,
        "no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service account's key file, or run `gcloud auth application-default login`".into(),
    ))
}

/// Azure Blob Storage: `AZURE_STORAGE_ACCOUNT_NAME` with a key, SAS token, bearer token or
/// service principal (`AZURE_STORAGE_CLIENT_ID`/`_SECRET`/`_TENANT_ID`), or the emulator.
fn azure(url: &str) -> Result<MicrosoftAzureBuilder> {
    let b = MicrosoftAzureBuilder::from_env();
    if env("AZURE_STORAGE_USE_EMULATOR").is_some() {
        return Ok(b);
    }
    if env("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
        return Err(missing(url, "AZURE_STORAGE_ACCOUNT_NAME is not set".into()));
    }
    let secrets = [
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_KEY",
        "AZURE_STORAGE_TOKEN",
        "AZURE_STORAGE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
    ];
    if secrets.iter().any(|v| env(v).is_some()) {
        return Ok(b);
    }
    Err(missing(
        url,
        "no Azure credentials: set AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_KEY, or AZURE_STORAGE_CLIENT_ID with AZURE_STORAGE_CLIENT_SECRET and AZURE_STORAGE_TENANT_ID)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_names_the_variable_it_lacks() {
        // Only this test in the crate touches these variables.
        for v in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_EC2_METADATA_DISABLED",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCOUNT_NAME",
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_USE_EMULATOR",
        ] {
            // SAFETY: no other thread of this test binary reads these variables.
            unsafe { std::env::remove_var(v) };
        }
        let home = tempfile::tempdir().unwrap();
        // SAFETY: as above.
        unsafe {
            std::env::set_var("HOME", home.path());
            std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", home.path().join("none"));
        }
        let err = |scheme: &str| {
            build(scheme, "bucket", &format!("{scheme}://bucket/run"))
                .expect_err("refused")
                .to_string()
        };
        assert!(err("s3").contains("AWS_ACCESS_KEY_ID"), "{}", err("s3"));
        assert!(err("s3").starts_with("s3://bucket/run"), "{}", err("s3"));
        assert!(err("gs").contains("GOOGLE_APPLICATION_CREDENTIALS"));
        assert!(err("az").contains("AZURE_STORAGE_ACCOUNT_NAME"));
        // SAFETY: as above.
        unsafe { std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE-SECRET-NOT-SHOWN") };
        let e = err("s3");
        assert!(e.contains("AWS_SECRET_ACCESS_KEY is not"), "{e}");
        assert!(!e.contains("AKIDEXAMPLE"), "a credential was printed: {e}");
        // SAFETY: as above.
        unsafe {
            std::env::remove_var("AWS_ACCESS_KEY_ID");
            std::env::set_var("AWS_PROFILE", "lab");
        }
        std::fs::write(
            home.path().join("none"),
            "[lab]\naws_access_key_id = AKID\naws_secret_access_key = s3cr3t\n",
        )
        .unwrap();
        assert!(build("s3", "bucket", "s3://bucket/run").is_ok());
        // SAFETY: as above.
        unsafe { std::env::set_var("AWS_PROFILE", "other") };
        let e = err("s3");
        assert!(e.contains("AWS_PROFILE is `other`"), "{e}");
        assert!(!e.contains("s3cr3t"));
        // SAFETY: as above.
        unsafe {
            std::env::set_var("AZURE_STORAGE_ACCOUNT_NAME", "acct");
        }
        assert!(err("az").contains("AZURE_STORAGE_ACCOUNT_KEY"));
    }
}
