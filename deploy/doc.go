// Package deploy holds no code. Its directory has the deployment files
// (kubernetes/, compose/, systemd/), and its tests check them: they decode
// every manifest strictly, validate the example configs with mtlsproxy's own
// "check", build the binary with scripts/build.sh (as the Dockerfile does)
// and assert it is static, and run the real tools (openssl, nginx,
// docker-compose, systemd-analyze) where they are installed. See README.md.
package deploy
